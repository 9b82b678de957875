"""`vlstack pretrain`: joint image-text pretraining with the mixed ITC + ITM + MLM + VTM loss.

The run: build (or load) the tokenizer and the model, stream the image-text pairs of
one or more shard directories (`vlstack data ingest`, `data clean`, `data synth`), mixed
by weight, through DataLoader workers (`vlstack.data.stream`), train with the Trainer on
1 process / DDP / FSDP2, checkpoint (resumable `dcp/` with the data position, plus an
inference `model.safetensors`), and evaluate retrieval and matching on a held-out shard
directory. The same function runs under `torchrun --nproc_per_node=N`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vlstack.checkpoint import load_model, write_model_files
from vlstack.data.augment import AugmentConfig
from vlstack.data.collate import PairCollate, PairEncoder
from vlstack.data.loader import caption_pairs, pairs_to_tensors
from vlstack.data.negatives import contrast_groups
from vlstack.data.schema import Sample
from vlstack.data.shards import read_shards
from vlstack.data.stream import StreamConfig, StreamingBatches, StreamSource
from vlstack.errors import ConfigError
from vlstack.eval.retrieval import evaluate_pairs
from vlstack.files import write_json
from vlstack.models.config import ModelConfig
from vlstack.models.initialize import init_weights, is_empty
from vlstack.models.tokenizer import choose_tokenizer, special_token_ids
from vlstack.models.vlm import build_model, count_parameters
from vlstack.train.distributed import init_distributed
from vlstack.train.objectives import PretrainLossConfig, PretrainObjective, itc_objective
from vlstack.train.trainer import TrainConfig, Trainer


@dataclass
class PretrainDataConfig:
    """Where the image-text pairs come from: shard directories of samples with an image and a text."""

    sources: list[StreamSource] = field(default_factory=list)
    """The training pairs, `[{path: DIR, weight: W}, ...]`: a corpus after `vlstack data ingest` / `data clean`,
    or `vlstack data synth --kind caption --n 6000 --out DIR`. Mixed by weight (see `vlstack.data.stream`)."""
    test: str | None = None
    """Held-out pairs for retrieval and matching accuracy (e.g. the same command with --split test)."""
    max_text_tokens: int = 32
    """A longer training caption is skipped with a reason (the epoch's line in train_log.jsonl counts it);
    a longer held-out caption is an error that names it."""
    augment: AugmentConfig | None = None
    """Label-preserving augmentation of the training pairs (`vlstack.data.augment`); None: off."""
    swap_negatives: bool = False
    """Give every training caption a swap negative (`vlstack.data.negatives`, NegCLIP): the caption with one word
    swapped for a contradicting one, an extra ITC negative for its image and its ITM negative, so that each
    attribute has to be bound to its object (not only the easiest one seen)."""
    contrasts: str | None = None
    """The contrast groups of the swaps: a file of groups, one a line, words separated by " | ", every word of a
    group contradicting the others (your domain's attributes); None: the shipped colours, shapes, directions,
    sizes and counts (`vlstack/data/resources/contrasts_*.txt`)."""
    stream: StreamConfig = field(default_factory=StreamConfig)


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
    """A local tokenizer directory; by default the pretrained LM's own (`model.language.pretrained_path`), or
    without one a byte-level BPE trained on the training captions."""
    out_dir: str = "runs/pretrain"


def run_pretraining(config: PretrainConfig, resume: str | None = None, trust: bool = False) -> dict:
    """Train, checkpoint and evaluate; returns (and writes to out_dir/pretrain.json) the results. `resume`: a
    checkpoint to continue (`trust`: one this user's runs did not write, see `Trainer.resume`)."""
    dist_info = init_distributed(config.train.parallel.mode, config.train.device)
    out = Path(config.out_dir)
    seed = config.train.seed
    if not config.data.sources or not config.data.test:
        raise ConfigError("pretraining needs data.sources and data.test, shard directories of image-text pairs: "
                          "--set 'data.sources=[{path: DIR}]' --set data.test=DIR; e.g. the output of vlstack data "
                          "ingest / data clean, or vlstack data synth --kind caption --n 6000 --out DIR")
    contrasts = contrast_groups(config.data.contrasts) if config.data.swap_negatives else None
    test_images, test_captions, _ = caption_pairs(config.data.test)
    tokenizer = choose_tokenizer(config.tokenizer, config.model.language, lambda: _source_texts(config.data.sources))
    specials = special_token_ids(tokenizer)
    # native modes build on the meta device: the Trainer gives the model storage and draws its weights once it is
    # placed (under FSDP2: sharded), so no rank holds more than its share; DeepSpeed builds its engine whole
    model = build_model(config.model, tokenizer, seed, empty=config.train.parallel.native)
    if not is_empty(model):
        model.to(dist_info.device)
    model_config = model.config

    train_set = StreamingBatches(
        config.data.sources, config.train.batch_size // config.train.grad_accum_steps,
        PairEncoder(tokenizer, model.config.vision, config.data.max_text_tokens, config.data.augment, contrasts),
        PairCollate(tokenizer.pad_token_id), seed, config.data.stream, pin_memory=dist_info.device.type == "cuda")
    test_set = pairs_to_tensors(test_images, test_captions, tokenizer, model.config.vision, config.data.max_text_tokens,
                                "encode held-out pairs")

    if config.objective == "mixed":
        objective = PretrainObjective(config.loss, specials.mask, list(vars(specials).values()))
    else:
        objective = itc_objective
    trainer = Trainer(model, objective, config.train, train_set, out_dir=out, dist_info=dist_info,
                      export=lambda directory, state: write_model_files(model, directory, tokenizer, state),
                      fill=lambda empty: init_weights(empty, seed))
    sharded = config.train.parallel.shards_weights
    before = evaluate_pairs(model, test_set, test_captions) if dist_info.is_main and not sharded else {}
    if resume:
        trainer.resume(resume, trust)
    history = trainer.fit(f"pretrain ({config.objective})")
    trained = model
    if sharded and dist_info.is_main:
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


def _source_texts(sources: list[StreamSource]) -> Iterator[str]:
    """The captions of the training sources, streamed (the tokenizer's training corpus)."""
    for source in sources:
        for item in read_shards(source.path):
            if isinstance(item, Sample) and item.text:
                yield item.text
