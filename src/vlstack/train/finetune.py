"""Progressive fine-tuning: stages run in order, each with its data, learning rate, freeze plan and loss.

The article's plan (`FinetuneConfig` defaults, `configs/finetune.yaml`): general
instructions (lr 5e-5) -> domain adaptation with the vision tower frozen (2e-5) ->
safety alignment, all unfrozen (1e-5); the preference stage follows with
`vlstack align`. Each stage streams its datasets (shard directories, or LLaVA / OpenAI
JSON files, which are first written as shards under OUT_DIR/data/) mixed by weight
through `vlstack.data.stream`, starts from the previous stage's exported model, trains
with the shared `Trainer` (a frozen module's parameters have `requires_grad=False`,
so they are not in the optimizer), optionally through LoRA adapters on the language
model (PEFT), and exports `OUT_DIR/<nn>-<name>/model/` (config.yaml, model.safetensors,
tokenizer/) with the adapters merged into the base weights, plus `stage.json` with its
losses and held-out figures.

Everything that can be wrong with a recipe (an unknown module in a freeze list, a
stage with no data, a missing dataset, a malformed conversation in a JSON file) is an
error before the first stage trains; a conversation of a shard directory that cannot
train is skipped with its reason (the epoch lines of the stage's train_log.jsonl). A
run that stops (SIGTERM, or a crash after a `train.save_every` checkpoint) continues with `resume=True`: finished stages are
skipped and the interrupted one resumes exactly through the Trainer's own resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from vlstack import checkpoint
from vlstack.checkpoint import load_checkpoint_tokenizer, load_model, load_weights, save_model
from vlstack.collectives import barrier, main_rank_first
from vlstack.config import save_yaml, to_dict
from vlstack.data.augment import AugmentConfig
from vlstack.data.collate import CollateConfig, SampleCollator
from vlstack.data.conversations import (
    SHOWN_PROBLEMS,
    ConversationCollate,
    ConversationEncoder,
    check_conversations,
    conversation_problem,
    encode_conversations,
    load_conversations,
)
from vlstack.data.ingest import SUMMARY as INGEST_SUMMARY
from vlstack.data.ingest import write_corpus
from vlstack.data.schema import Rejected, Sample
from vlstack.data.shards import read_shards
from vlstack.data.sources import read_conversations
from vlstack.data.stream import SourceIndex, StreamConfig, StreamingBatches, StreamSource
from vlstack.errors import ConfigError, DataError
from vlstack.eval.conversations import evaluate_samples
from vlstack.files import write_json
from vlstack.infer.engine import Engine, EngineConfig
from vlstack.models.config import ModelConfig
from vlstack.models.tokenizer import choose_tokenizer
from vlstack.models.vlm import QwenImageModel, build_model
from vlstack.train.distributed import DistInfo, init_distributed
from vlstack.train.objectives import SafetyLossConfig, SafetyObjective, sft_objective
from vlstack.train.trainer import Batch, Export, TrainConfig, Trainer, resume_from

logger = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
MODEL_DIR = "model"
INITIAL_DIR = "initial"
DATA_DIR = "data"
"""JSON datasets written as shards, under OUT_DIR."""
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class DatasetSpec:
    """One source of conversations: a shard directory or a LLaVA / OpenAI JSON(L) file."""

    name: str
    """A label: every sample gets it as `meta.dataset`, and a held-out dataset's blind baseline comes from
    the training datasets of the same name."""
    path: str = ""
    """A shard directory of samples with `conversations` (`vlstack data synth-instructions` writes one), or a
    LLaVA (`conversations`) or OpenAI (`messages`) JSON / JSON-lines file."""
    samples: int | None = None
    """Use the first `samples` conversations (None: all)."""
    image_root: str | None = None
    """The folder a JSON file's image paths are relative to (default: the file's own folder)."""
    weight: float | None = None
    """Sampling weight in its stage's mix (see `vlstack.data.stream`); None: its number of samples, so the
    stage draws as from its datasets put together."""


@dataclass
class LoraSettings:
    """LoRA adapters on the language model (PEFT); merged into the base weights when the stage ends."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    """Names of the LM's linear layers that get adapters (Qwen2 names)."""


@dataclass
class StageConfig:
    """One fine-tuning stage."""

    name: str = "general"
    """Letters, digits, `_` and `-`: it names the stage's folder."""
    datasets: list[DatasetSpec] = field(default_factory=list)
    lr: float = 5e-5
    steps: int = 300
    batch_size: int = 32
    freeze: list[str] = field(default_factory=list)
    """Modules whose parameters do not train in this stage: vision, projector, fusion, language."""
    lr_scale: dict[str, float] = field(default_factory=dict)
    """Learning-rate multipliers of modules that train, e.g. {vision: 0.1}: the vision tower learns
    at a tenth of `lr` (at the full rate of a tiny model's LM it forgets what pretraining taught it)."""
    lora: LoraSettings | None = None
    """Train LoRA adapters instead of the LM's own weights (which are then frozen)."""
    loss: Literal["sft", "safety"] = "sft"
    """sft: cross-entropy on the assistant's tokens; safety: refusals up-weighted plus unlikelihood on
    the compliant answers that harmful requests must not get (weights in `safety`)."""
    safety: SafetyLossConfig = field(default_factory=SafetyLossConfig)
    augment: AugmentConfig | None = None
    """Label-preserving augmentation of this stage's training images (`vlstack.data.augment`: colour jitter and
    RandAugment, no operation that would falsify a colour, a direction or a box the texts name); None: off."""


@dataclass
class FinetuneEvalConfig:
    """Held-out checks after each stage (greedy decoding through the Engine)."""

    datasets: list[DatasetSpec] = field(default_factory=list)
    """Held-out conversations: the last answer of each is the reference."""
    max_new_tokens: int = 24
    batch_size: int = 16
    every_stage: bool = True
    """Evaluate after every stage (to see what each adds and what it costs), or only after the last."""


def _article_plan() -> list[StageConfig]:
    """The article's plan without its data: general (lr 5e-5) -> domain, vision frozen (2e-5) -> safety (1e-5)."""
    return [
        StageConfig("general", lr=5e-5, steps=300),
        StageConfig("domain", lr=2e-5, steps=100, freeze=["vision"]),
        StageConfig("safety", lr=1e-5, steps=100, loss="safety"),
    ]


@dataclass
class FinetuneConfig:
    """A progressive fine-tuning run: where it starts, its stages in order, shared settings, output."""

    base: str | None = "runs/pretrain/checkpoint"
    """The checkpoint to start from (a pretraining run's checkpoint). None: a fresh `model` with a
    tokenizer trained on the stages' conversations."""
    model: ModelConfig = field(default_factory=lambda: ModelConfig.from_preset("tiny"))
    """Only used when `base` is None."""
    stages: list[StageConfig] = field(default_factory=_article_plan)
    """The stages in order; each needs its `datasets` (configs/finetune.yaml shows a whole recipe)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(warmup_steps=10, log_every=10))
    """Settings every stage shares (precision, warmup, clipping, seed, ...); each stage sets its own lr,
    steps and batch_size. `train.seed` also seeds a fresh model."""
    max_length: int = 256
    """Longest conversation in tokens after `<image>` expansion; longer ones are left out with a reason."""
    stream: StreamConfig = field(default_factory=StreamConfig)
    """How the stages' batches stream from their shards (DataLoader workers, shuffle block)."""
    validation: list[DatasetSpec] = field(default_factory=list)
    """Held-out conversations (a validation split, apart from `eval`'s test data): each stage scores the ones
    named like its own datasets every `train.validate_every` steps and at its end (loss and token accuracy,
    `validation` lines of its train_log.jsonl; `train.keep_best` ends it on its best step), and reports the
    gap to the same number of its training conversations."""
    eval: FinetuneEvalConfig = field(default_factory=FinetuneEvalConfig)
    out_dir: str = "runs/finetune"


# --- checks before any work -----------------------------------------------------------------------


def check_config(config: FinetuneConfig) -> None:
    """Raise a ConfigError for the first problem of the recipe, naming the field and the valid choices."""
    if not config.stages:
        raise ConfigError("stages is empty: list at least one stage")
    names = [stage.name for stage in config.stages]
    for index, stage in enumerate(config.stages):
        where = f"stages[{index}] ({stage.name!r})"
        if not _NAME.match(stage.name) or names.count(stage.name) > 1:
            raise ConfigError(f"{where}: name must be unique and use only letters, digits, '_' and '-'")
        for key, modules in (("freeze", stage.freeze), ("lr_scale", stage.lr_scale)):
            unknown = [m for m in modules if m not in QwenImageModel.PARTS]
            if unknown:
                raise ConfigError(f"{where}.{key}: unknown module(s) {unknown}; valid modules: "
                                  f"{', '.join(QwenImageModel.PARTS)}")
        if any(scale <= 0 for scale in stage.lr_scale.values()):
            raise ConfigError(f"{where}.lr_scale: multipliers must be above 0 (freeze a module to stop it training)")
        if stage.steps < 1 or stage.batch_size < 1 or stage.lr <= 0:
            raise ConfigError(f"{where}: steps and batch_size must be at least 1 and lr above 0")
        if not stage.datasets:
            raise ConfigError(f"{where} has no data: list at least one dataset under datasets, "
                              "{name: LABEL, path: DIR_OR_FILE} (`vlstack data synth-instructions` writes synthetic ones)")
        for number, spec in enumerate(stage.datasets):
            _check_dataset(spec, f"{where}.datasets[{number}]")
        if stage.lora is not None and (stage.lora.r < 1 or not stage.lora.target_modules):
            raise ConfigError(f"{where}.lora: r must be at least 1 and target_modules non-empty")
    for number, spec in enumerate(config.eval.datasets):
        _check_dataset(spec, f"eval.datasets[{number}]")
    for number, spec in enumerate(config.validation):
        _check_dataset(spec, f"validation[{number}]")


def _check_dataset(spec: DatasetSpec, where: str) -> None:
    if not spec.path or not Path(spec.path).exists():
        raise ConfigError(f"{where} ({spec.name!r}): path {spec.path!r} is not a shard directory or a JSON file")
    if spec.samples is not None and spec.samples < 1:
        raise ConfigError(f"{where} ({spec.name!r}) has samples={spec.samples}; use 1 or more (null: all)")


def stage_sources(specs: list[DatasetSpec], data_dir: Path, staging: Path, where: str) -> list[StreamSource]:
    """The stream sources of a stage's datasets: shard directories as they are, JSON files written as shards
    under `data_dir` (into `staging` first, the caller moves them) once their conversations are checked."""
    sources = []
    for spec in specs:
        path = Path(spec.path)
        if path.is_file():
            path = _conversation_shards(spec, data_dir, staging, where)
        size = len(SourceIndex(staging / path.name if not path.exists() else path, spec.samples))
        sources.append(StreamSource(str(path), spec.weight or float(size), spec.samples))
    return sources


def _conversation_shards(spec: DatasetSpec, data_dir: Path, staging: Path, where: str) -> Path:
    """Where a JSON file's conversations stream from: `data_dir/<stem>-<digest>` (written into `staging` when
    an earlier run has not). A record that cannot be read or cannot train is a DataError listing them."""
    image_root = Path(spec.image_root or Path(spec.path).parent)
    digest = hashlib.sha1(f"{Path(spec.path).resolve()}|{image_root.resolve()}".encode()).hexdigest()[:8]
    target = data_dir / f"{Path(spec.path).stem}-{digest}"
    if (target / INGEST_SUMMARY).is_file() or (staging / target.name / INGEST_SUMMARY).is_file():
        return target
    problems: list[str] = []

    def checked() -> Iterator[Sample]:
        for item in read_conversations(spec.path, image_root):
            problem = f"{item.reason}: {item.detail}" if isinstance(item, Rejected) else conversation_problem(item)
            if problem is None:
                yield item
            else:
                problems.append(f"  {item.id}: {problem}")

    write_corpus(checked(), staging / target.name, {"format": "conversations", "input": spec.path},
                 description=f"read {spec.name}")
    if problems:
        listed = "\n".join(problems[:SHOWN_PROBLEMS])
        raise DataError(f"{len(problems)} record(s) of {spec.path} ({where}) cannot train:\n{listed}\nfix or remove "
                        "them")
    return target


def training_samples(sources: list[StreamSource], names: list[str], wanted: set[str], limit: int | None = None,
                     images: bool = False) -> list[Sample]:
    """The conversations of the sources named in `wanted` (at most `limit` of each): without image bytes, the
    answers a held-out dataset's blind baseline counts; with `images`, questions to measure the train side of
    the train-vs-held-out gap on."""
    samples = []
    for source, name in zip(sources, names):
        if name in wanted:
            count = source.samples if limit is None else min(limit, source.samples or limit)
            for item in itertools.islice(read_shards(source.path), count):
                if isinstance(item, Sample):
                    item.meta["dataset"] = name
                    if not images:
                        item.images = [dataclasses.replace(ref, data=None) for ref in item.images]
                    samples.append(item)
    return samples


def dataset_samples(specs: list[DatasetSpec], where: str) -> list[Sample]:
    """The conversations of `specs`, each labelled with its spec's name, checked (a malformed one is a
    DataError naming it)."""
    samples: list[Sample] = []
    for spec in specs:
        loaded = load_conversations(spec.path, spec.image_root)[: spec.samples]
        for sample in loaded:
            sample.meta["dataset"] = spec.name
        samples += loaded
    check_conversations(samples, where)
    return samples


# --- freezing and LoRA -------------------------------------------------------------------------------


def freeze(model: QwenImageModel, modules: list[str]) -> None:
    """Set `requires_grad=False` on the named modules' parameters (the Trainer's optimizer skips them)."""
    for name in modules:
        if name not in QwenImageModel.PARTS:
            raise ConfigError(f"unknown module {name!r} in a freeze list; valid modules: "
                              f"{', '.join(QwenImageModel.PARTS)}")
        for module in model.part(name):
            module.requires_grad_(False)


def add_lora(model: QwenImageModel, settings: LoraSettings) -> None:
    """Wrap the language model with trainable LoRA adapters (its own weights frozen)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=list(settings.target_modules))
    try:
        model.language_model = get_peft_model(model.language_model, lora)
    except ValueError as error:  # PEFT's error for target modules the model does not have
        raise ConfigError(f"lora.target_modules {settings.target_modules}: {error}") from error


def merge_lora(model: QwenImageModel) -> None:
    """Fold the adapters into the base weights: the plain language model comes back, same outputs."""
    model.language_model = model.language_model.merge_and_unload()


# --- the run -------------------------------------------------------------------------------------------


def run_finetune(config: FinetuneConfig, resume: bool = False, trust: bool = False) -> dict:
    """Run the stages in order; returns (and writes to OUT_DIR/finetune.json) losses and held-out figures.

    With `resume`, finished stages (their `stage.json` exists) are skipped and an interrupted stage
    continues from its checkpoint; without it, an `out_dir` that holds an earlier run is an error.
    """
    started = time.perf_counter()
    check_config(config)
    dist_info = init_distributed(config.train.parallel.mode, config.train.device)
    out = Path(config.out_dir)
    if (out / "finetune_config.yaml").is_file() and not resume:
        raise ConfigError(f"{out} holds an earlier fine-tuning run; resume it (--resume) or choose another out_dir")
    barrier()  # every rank has checked before rank 0 writes the run's config
    with main_rank_first():  # rank 0 converts the JSON datasets and saves a fresh model; the others read them
        sources, held_out = _prepare_data(config, out)
        if dist_info.is_main:
            save_yaml(config, out / "finetune_config.yaml")
        start = Path(config.base) if config.base else _fresh_start(config, sources, out / INITIAL_DIR)
    if not (start / checkpoint.CONFIG_NAME).is_file():
        raise ConfigError(f"base {str(start)!r} is not a checkpoint directory (no {checkpoint.CONFIG_NAME}); "
                          "pass the checkpoint/ folder of a pretraining run")
    results: dict = {"base": str(start), "stages": {}}
    for index, stage in enumerate(config.stages, start=1):
        last = index == len(config.stages)
        evaluation = held_out if config.eval.every_stage or last else {}
        result = _run_stage(config, stage, out / f"{index:02d}-{stage.name}", start, sources[stage.name],
                            evaluation, dist_info, trust)
        results["stages"][stage.name] = result
        if result["status"] == "interrupted":
            logger.warning("stage %r stopped at step %d; continue with resume", stage.name, result["step"])
            break
        start = Path(result["checkpoint"])
    results["checkpoint"] = str(start)
    results["eval"] = results["stages"].get(config.stages[-1].name, {}).get("eval", {})
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["world_size"] = dist_info.world
    if dist_info.is_main:
        write_json(out / "finetune.json", results)
    return results


def _prepare_data(config: FinetuneConfig, out: Path) -> tuple[dict[str, list[StreamSource]], dict[str, list[Sample]]]:
    """Each stage's stream sources (JSON datasets written as shards under OUT/data once) and the held-out
    conversations."""
    staging = out.with_name(f".{out.name}.data-tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        sources = {stage.name: stage_sources(stage.datasets, out / DATA_DIR, staging, f"stage {stage.name!r}")
                   for stage in config.stages}
        held_out = {spec.name: dataset_samples([spec], f"eval dataset {spec.name!r}")
                    for spec in config.eval.datasets}
        (out / DATA_DIR).mkdir(parents=True, exist_ok=True)
        for converted in staging.glob("*") if staging.is_dir() else ():
            converted.rename(out / DATA_DIR / converted.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sources, held_out


def _fresh_start(config: FinetuneConfig, sources: dict[str, list[StreamSource]], directory: Path) -> Path:
    """A new model and a tokenizer trained on every stage's conversations, saved once (a resumed run reuses it)."""
    if (directory / checkpoint.CONFIG_NAME).is_file():
        return directory
    texts = (turn["value"] for stage in sources.values() for source in stage
             for item in itertools.islice(read_shards(source.path), source.samples) if isinstance(item, Sample)
             for turn in item.conversations)
    tokenizer = choose_tokenizer(None, config.model.language, lambda: texts)
    save_model(build_model(config.model, tokenizer, config.train.seed), directory, tokenizer)
    return directory


def _run_stage(config: FinetuneConfig, stage: StageConfig, stage_dir: Path, start: Path,
               sources: list[StreamSource], held_out: dict[str, list[Sample]], dist_info: DistInfo,
               trust: bool = False) -> dict:
    """Train one stage on every rank; rank 0 exports its model (from the checkpoint's consolidated weights, the
    same under 1 process, DDP and FSDP2) and evaluates it while the others wait for its `stage.json`."""
    done = stage_dir / STAGE_FILE
    if done.is_file():
        saved = json.loads(done.read_text(encoding="utf-8"))
        if saved["config"] != to_dict(stage):
            raise ConfigError(f"stage {stage.name!r} finished with another config ({done}); restore it, or start "
                              "a new run in another out_dir")
        return {**saved, "status": "skipped (done)"}
    t = time.perf_counter()
    # native modes read the weights once the model is placed (under FSDP2, each rank only its shards); LoRA
    # adapters and DeepSpeed's engine wrap a whole model
    empty = config.train.parallel.native and stage.lora is None
    model = load_model(start, empty=empty)
    if not empty:
        model.to(dist_info.device)
    tokenizer = load_checkpoint_tokenizer(start)
    freeze(model, stage.freeze)
    if stage.lora is not None:
        add_lora(model, stage.lora)
    collator = SampleCollator(tokenizer, CollateConfig(num_image_tokens=model.num_image_tokens(),
                                                       max_length=config.max_length,
                                                       vision=model.config.vision))
    unsafe = stage.loss == "safety"
    batches = StreamingBatches(sources, stage.batch_size // config.train.grad_accum_steps,
                               ConversationEncoder(collator, unsafe, stage.augment),
                               ConversationCollate(tokenizer.pad_token_id, model.config.vision.image_size, unsafe),
                               config.train.seed, config.stream, pin_memory=dist_info.device.type == "cuda")
    objective = sft_objective if stage.loss == "sft" else SafetyObjective(stage.safety)
    lr_scale = {prefix: scale for module, scale in stage.lr_scale.items() for prefix in QwenImageModel.PARTS[module]}
    train = dataclasses.replace(config.train, lr=stage.lr, steps=stage.steps, batch_size=stage.batch_size,
                                lr_scale=lr_scale)
    names = [spec.name for spec in stage.datasets]
    validation = [spec for spec in config.validation if spec.name in names]
    held_out_rows = (encode_conversations(dataset_samples(validation, f"stage {stage.name!r} validation"), collator,
                                          unsafe, "encode validation")[0] if validation else None)
    trainer = Trainer(model, objective, train, batches, out_dir=stage_dir, dist_info=dist_info,
                      export=_merged_export(model, tokenizer, stage.lora), fill=lambda empty: load_weights(empty, start),
                      validation=held_out_rows)
    resumable = trainer.checkpoint_dir
    resume_from(trainer, True, trust)  # an interrupted stage continues where its checkpoint left it
    resumed_at = trainer.step
    records = trainer.fit(f"finetune: {stage.name}")
    history = [r for r in records if not r.get("skipped") and "loss" in r and "event" not in r]
    skipped = Counter(batches.unreported_skips())
    for record in records:
        skipped.update(record.get("skipped_by_reason", {}))
    if trainer.step < stage.steps:
        return {"status": "interrupted", "step": trainer.step}
    fit = _validation_gap(trainer, held_out_rows, sources, names, {spec.name for spec in validation}, collator, unsafe)
    exported = stage_dir / MODEL_DIR
    trainable = sum(p.numel() for group in trainer.optimizer.param_groups for p in group["params"])
    del model, trainer  # under FSDP2 this rank's shards; the checkpoint holds the whole model
    if not dist_info.is_main:
        barrier()  # rank 0 exports and evaluates
        return json.loads(done.read_text(encoding="utf-8"))
    model = load_model(resumable).to(dist_info.device)
    save_model(model, exported, tokenizer)
    result = {
        "status": "done",
        "config": to_dict(stage),
        "steps": stage.steps,
        "resumed_at_step": resumed_at,
        "samples": sum(len(index) for index in batches.plan.sources),
        "skipped": dict(skipped),
        "trainable_parameters": trainable,
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "validation": [r for r in records if r.get("event") in ("validation", "best")],
        **fit,
        "train_seconds": round(time.perf_counter() - t, 1),
        "checkpoint": str(exported),
    }
    if held_out:
        names = [spec.name for spec in stage.datasets]
        most = max(len(samples) for samples in held_out.values())
        result["eval"] = evaluate(model, tokenizer, held_out, config, training_samples(sources, names, set(held_out)),
                                  training_samples(sources, names, set(held_out), most, images=True))
    result["seconds"] = round(time.perf_counter() - t, 1)
    write_json(done, result)
    shutil.rmtree(resumable, ignore_errors=True)  # the exported model replaces the resumable state
    barrier()
    return result


def _validation_gap(trainer: Trainer, held_out: Batch | None, sources: list[StreamSource], names: list[str],
                    wanted: set[str], collator: SampleCollator, unsafe: bool) -> dict:
    """The stage's final weights scored (loss, token accuracy) on its validation rows and on as many of its
    training conversations, and the gap between them; nothing for a stage without validation data. Every rank
    calls it alike."""
    if held_out is None:
        return {}
    rows = len(held_out["input_ids"])
    per_dataset = -(-rows // len(wanted))
    seen = training_samples(sources, names, wanted, per_dataset, images=True)[:rows]
    on_train = trainer.score(encode_conversations(seen, collator, unsafe, "encode training samples")[0])
    on_validation = trainer.score(held_out)
    gap = {name: on_train[name] - on_validation[name] for name in on_train if name in on_validation}
    return {"fit": {"train": on_train, "validation": on_validation, "gap": gap}}


def _merged_export(model: QwenImageModel, tokenizer: PreTrainedTokenizerBase, lora: LoraSettings | None) -> Export:
    """What a stage's checkpoints hold for inference: the consolidated weights, with LoRA adapters merged (in a
    copy built on the meta device that takes the saved tensors: no initialisation, no random draws)."""

    def export(directory: Path, state: dict[str, torch.Tensor]) -> None:
        if lora is not None:
            with torch.device("meta"):
                merged = QwenImageModel(model.config)
                add_lora(merged, lora)
            merged.load_state_dict(state, assign=True)
            merge_lora(merged)
            state = merged.state_dict()
        checkpoint.write_model_files(model, directory, tokenizer, state)

    return export


def evaluate(model: QwenImageModel, tokenizer: PreTrainedTokenizerBase, held_out: dict[str, list[Sample]],
             config: FinetuneConfig, trained: list[Sample], seen: list[Sample]) -> dict[str, dict]:
    """Held-out figures per dataset; the blind baseline comes from the same dataset's training samples, and
    as many of them as held-out ones (`seen`) are answered too: `train_accuracy` and the `gap` to held-out
    (a dataset this stage does not train has neither)."""
    engine = Engine(model, tokenizer, EngineConfig(max_batch_size=config.eval.batch_size))
    results = {}
    for name, samples in held_out.items():
        figures = evaluate_samples(engine, samples, config.eval.max_new_tokens,
                                   [s for s in trained if s.meta.get("dataset") == name], f"evaluate {name}")
        on_train = [s for s in seen if s.meta.get("dataset") == name][: len(samples)]
        if on_train:
            figures["train_accuracy"] = evaluate_samples(engine, on_train, config.eval.max_new_tokens,
                                                         description=f"evaluate {name} (training samples)")["accuracy"]
            figures["gap"] = figures["train_accuracy"] - figures["accuracy"]
        results[name] = figures
    return results


def summary(results: dict) -> str:
    """A few lines for the terminal: each stage's losses, then the held-out figures of the last one."""
    lines = []
    for name, stage in results["stages"].items():
        if stage["status"] == "interrupted":
            lines.append(f"{name}: interrupted at step {stage['step']}; continue with --resume")
            continue
        line = (f"{name}: {stage['status']}, {stage['steps']} steps, loss {stage['first_loss']:.3f} -> "
                f"{stage['final_loss']:.3f}, {stage['samples']} conversations")
        if "fit" in stage:
            fit = stage["fit"]
            line += (f"; validation loss {fit['validation']['loss']:.3f}, token accuracy on training samples "
                     f"{fit['train']['token_acc']:.3f} / validation {fit['validation']['token_acc']:.3f} (gap "
                     f"{fit['gap']['token_acc']:+.3f})")
        lines.append(line)
    lines += [eval_line(name, figures) for name, figures in results["eval"].items()]
    lines.append(f"checkpoint: {results['checkpoint']}")
    return "\n".join(lines)


def eval_line(name: str, figures: dict) -> str:
    """One held-out dataset's figures in words: accuracy against its blind baseline, per question type
    (where there are several), refusal rates."""
    line = f"held-out {name} accuracy {figures['accuracy']:.3f}"
    if "blind_baseline" in figures:
        line += f" (blind baseline {figures['blind_baseline']:.3f})"
    if "train_accuracy" in figures:
        line += f", on training samples {figures['train_accuracy']:.3f} (gap {figures['gap']:+.3f})"
    if len(figures.get("by_type", {})) > 1:
        line += "; by question type: " + ", ".join(f"{kind} {value:.2f}" for kind, value in figures["by_type"].items())
    if "harmful_refusal_rate" in figures:
        line += (f"; refusals on harmful requests {figures['harmful_refusal_rate']:.3f}, on safe look-alikes "
                 f"{figures['safe_refusal_rate']:.3f}")
    return line
