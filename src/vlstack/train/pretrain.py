"""`vlstack pretrain`: joint image-text pretraining with the mixed ITC + ITM + MLM + VTM loss.

The run: read the image-text pairs of a shard directory (`vlstack data synth`, `data
clean`), build (or load) the tokenizer and the model, encode the pairs, train with the
Trainer on 1 process / DDP / FSDP2, checkpoint (resumable `dcp/` plus an inference
`model.safetensors`), and evaluate retrieval and matching on a held-out shard directory.
The same function runs under `torchrun --nproc_per_node=N`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from vlstack.checkpoint import load_model, write_model_files
from vlstack.data.loader import caption_pairs, pairs_to_tensors
from vlstack.errors import ConfigError
from vlstack.eval.retrieval import evaluate_pairs
from vlstack.files import write_json
from vlstack.models.config import ModelConfig
from vlstack.models.tokenizer import load_tokenizer, special_token_ids, train_tokenizer
from vlstack.models.vlm import QwenImageModel, count_parameters
from vlstack.train.distributed import init_distributed
from vlstack.train.objectives import PretrainLossConfig, PretrainObjective, itc_objective
from vlstack.train.trainer import TrainConfig, Trainer


@dataclass
class PretrainDataConfig:
    """Where the image-text pairs come from: shard directories of samples with an image and a text."""

    train: str | None = None
    """The training pairs, e.g. `vlstack data synth --kind caption --n 6000 --out DIR` or a cleaned corpus."""
    test: str | None = None
    """Held-out pairs for retrieval and matching accuracy (e.g. the same command with --split test)."""
    max_text_tokens: int = 32
    """Longer captions are an error that names the sample, never silently cut."""


@dataclass
class PretrainConfig:
    """A pretraining run: model, data, optimisation, loss mix and output directory."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig.from_preset("tiny"))
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=250, batch_size=48, lr=1e-3,
                                                                      warmup_steps=25))
    loss: PretrainLossConfig = field(default_factory=PretrainLossConfig)
    objective: Literal["mixed", "itc"] = "mixed"
    """mixed: 0.4 ITC + 0.3 ITM + 0.2 MLM + 0.1 VTM (weights in `loss`); itc: contrastive only."""
    tokenizer: str | None = None
    """A local tokenizer directory; by default a byte-level BPE is trained on the training captions."""
    out_dir: str = "runs/pretrain"


def run_pretraining(config: PretrainConfig, resume: str | None = None, trust: bool = False) -> dict:
    """Train, checkpoint and evaluate; returns (and writes to out_dir/pretrain.json) the results. `resume`: a
    checkpoint to continue (`trust`: one this user's runs did not write, see `Trainer.resume`)."""
    dist_info = init_distributed(config.train.parallel.mode)
    out = Path(config.out_dir)
    seed = config.train.seed
    if not config.data.train or not config.data.test:
        raise ConfigError("pretraining needs data.train and data.test, shard directories of image-text pairs; "
                          "e.g. vlstack data synth --kind caption --n 6000 --out data/train (and --split test "
                          "--out data/test), or the output of vlstack data clean")
    train_images, captions, _ = caption_pairs(config.data.train)
    test_images, test_captions, _ = caption_pairs(config.data.test)
    model_config = dataclasses.replace(config.model)
    if config.tokenizer:
        tokenizer = load_tokenizer(config.tokenizer)
    else:
        tokenizer = train_tokenizer(captions, vocab_size=model_config.language.vocab_size)
    specials = special_token_ids(tokenizer)
    model_config.image_token_id = specials.image
    torch.manual_seed(seed)
    model = QwenImageModel(model_config).to(dist_info.device)

    size = model_config.vision.image_size
    train_set = pairs_to_tensors(train_images, captions, tokenizer, size, config.data.max_text_tokens,
                                 "encode train pairs")
    test_set = pairs_to_tensors(test_images, test_captions, tokenizer, size, config.data.max_text_tokens,
                                "encode held-out pairs")
    before = evaluate_pairs(model, test_set, test_captions) if dist_info.is_main else {}

    if config.objective == "mixed":
        objective = PretrainObjective(config.loss, specials.mask, list(vars(specials).values()))
    else:
        objective = itc_objective
    trainer = Trainer(model, objective, config.train, train_set, out_dir=out, dist_info=dist_info,
                      export=lambda directory, state: write_model_files(model, directory, tokenizer, state))
    if resume:
        trainer.resume(resume, trust)
    history = trainer.fit(f"pretrain ({config.objective})")
    trained = model
    if config.train.parallel.mode in ("fsdp2", "deepspeed") and dist_info.is_main:
        # ZeRO-3 leaves only this rank's shards in `model`; the exported checkpoint holds all weights
        trained = load_model(trainer.checkpoint_dir).to(dist_info.device)
    results = {
        "parameters": count_parameters(model_config),
        "world_size": dist_info.world,
        "steps": trainer.step,
        "history": history,
        "before_training": before,
        "after_training": evaluate_pairs(trained, test_set, test_captions) if dist_info.is_main else {},
        "checkpoint": str(trainer.checkpoint_dir),
    }
    if dist_info.is_main:
        write_json(out / "pretrain.json", results)
    return results
