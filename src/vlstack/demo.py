"""`vlstack demo`: the whole stack end to end on a tiny model, on a laptop CPU, in minutes.

Stages run in order and each adds a section to `report.json` / `report.md`:
synthesise a corpus -> train a tokenizer -> build the model -> contrastive
pretraining -> held-out retrieval -> save a checkpoint. Like the CLI, this module
sits on top of the library and nothing imports it.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import transformers

import vlstack
from vlstack.config import save_yaml, to_dict
from vlstack.data.collate import image_to_tensor, tokenize_texts
from vlstack.data.synthetic import shape_scenes
from vlstack.eval.retrieval import image_to_text_recall
from vlstack.models.config import ModelConfig
from vlstack.models.tokenizer import special_token_ids, train_tokenizer
from vlstack.models.vlm import QwenImageModel, count_parameters
from vlstack.progress import progress_bar
from vlstack.train.objectives import itc_objective
from vlstack.train.trainer import Batch, TrainConfig, Trainer


@dataclass
class DemoConfig:
    """What the demo builds and how long it trains."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig.from_preset("tiny"))
    """The model to train; a recipe may write `model: {preset: tiny, ...overrides}`."""
    out_dir: str = "runs/demo"
    seed: int = 0
    train_samples: int = 6000
    test_samples: int = 500
    max_text_tokens: int = 32
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=500, batch_size=64, lr=1e-3, warmup_steps=50, log_every=10)
    )

    @classmethod
    def quick(cls) -> "DemoConfig":
        """A one-minute run of every stage (used by the tests)."""
        return cls(
            out_dir="runs/demo-quick",
            train_samples=1500,
            test_samples=200,
            train=TrainConfig(steps=120, batch_size=48, lr=1e-3, warmup_steps=20, log_every=10),
        )


def run_demo(config: DemoConfig) -> dict:
    """Run every stage; returns the report (also written to `out_dir`)."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_log.jsonl").unlink(missing_ok=True)
    torch.manual_seed(config.seed)
    save_yaml(config, out / "demo_config.yaml")
    report: dict = {"config": to_dict(config), "versions": _versions(), "stages": {}}
    started = time.perf_counter()

    def stage(name: str, result: dict, began: float) -> None:
        result["seconds"] = round(time.perf_counter() - began, 2)
        report["stages"][name] = result

    t = time.perf_counter()
    train_scenes = shape_scenes(config.train_samples, seed=config.seed)
    test_scenes = shape_scenes(config.test_samples, seed=config.seed + 10_000)
    stage("data", {"train_pairs": len(train_scenes), "test_pairs": len(test_scenes),
                   "distinct_train_captions": len({s.caption for s in train_scenes})}, t)

    t = time.perf_counter()
    model_config = dataclasses.replace(config.model)
    corpus = [s.caption for s in train_scenes]
    tokenizer = train_tokenizer(corpus, vocab_size=model_config.language.vocab_size)
    model_config.image_token_id = special_token_ids(tokenizer).image
    stage("tokenizer", {"vocab_size": len(tokenizer)}, t)

    t = time.perf_counter()
    model = QwenImageModel(model_config)
    stage("model", {"preset": model_config.name, "parameters": count_parameters(model_config)}, t)

    size = model_config.vision.image_size
    train_set = _tensorize(train_scenes, tokenizer, size, config.max_text_tokens, "encode train")
    test_set = _tensorize(test_scenes, tokenizer, size, config.max_text_tokens, "encode test")
    test_captions = [s.caption for s in test_scenes]

    t = time.perf_counter()
    before = _retrieval(model, test_set, test_captions)
    trainer = Trainer(model, itc_objective, config.train, log_path=out / "train_log.jsonl")
    history = trainer.fit(_random_batches(train_set, config.train.batch_size, config.seed), "pretrain (ITC)")
    train_seconds = time.perf_counter() - t
    stage("pretrain_itc", {
        "steps": trainer.step,
        "samples_per_s": round(trainer.step * config.train.batch_size / train_seconds, 1),
        "first_loss": history[0]["loss"],
        "final_loss": history[-1]["loss"],
        "skipped_steps": sum(r["skipped"] for r in history),
    }, t)
    _plot_losses(history, out / "loss.png")

    t = time.perf_counter()
    after = _retrieval(model, test_set, test_captions)
    stage("retrieval", {"before_training": before, "after_training": after}, t)

    t = time.perf_counter()
    model.save_pretrained(out / "checkpoint", tokenizer=tokenizer)
    stage("checkpoint", {"path": str(out / "checkpoint")}, t)

    report["total_seconds"] = round(time.perf_counter() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / "report.md").write_text(_markdown(report), encoding="utf-8")
    return report


def _tensorize(scenes, tokenizer, size: int, max_tokens: int, description: str) -> Batch:
    images = []
    with progress_bar(transient=True) as progress:
        for scene in progress.track(scenes, description=description):
            images.append(image_to_tensor(scene.image, size))
    text = tokenize_texts(tokenizer, [s.caption for s in scenes], max_tokens)
    return {"pixel_values": torch.stack(images), "input_ids": text.input_ids, "attention_mask": text.attention_mask}


def _random_batches(data: Batch, batch_size: int, seed: int) -> Iterator[Batch]:
    """Endless shuffled epochs over an in-memory dataset, reproducible from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    n = len(data["input_ids"])
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            yield {key: value[index] for key, value in data.items()}


@torch.no_grad()
def _retrieval(model: QwenImageModel, data: Batch, captions: list[str]) -> dict[str, float]:
    model.eval()
    image_embeds, text_embeds = [], []
    for start in range(0, len(captions), 128):
        part = {key: value[start : start + 128] for key, value in data.items()}
        out = model(part["pixel_values"], part["input_ids"], part["attention_mask"], fuse=False)
        image_embeds.append(out.image_embeds)
        text_embeds.append(out.text_embeds)
    image_all, text_all = torch.cat(image_embeds), torch.cat(text_embeds)
    return {**image_to_text_recall(image_all, text_all, captions, k=1),
            **image_to_text_recall(image_all, text_all, captions, k=5)}


def _plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in history], [r["loss"] for r in history])
    ax.set(xlabel="step", ylabel="ITC loss", title="Contrastive pretraining")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _versions() -> dict[str, str]:
    return {"vlstack": vlstack.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "machine": platform.machine()}


def _markdown(report: dict) -> str:
    s = report["stages"]
    params = s["model"]["parameters"]
    before, after = s["retrieval"]["before_training"], s["retrieval"]["after_training"]
    lines = [
        "# vlstack demo report",
        "",
        f"Total time: {report['total_seconds']} s on {report['versions']['machine']}, "
        f"torch {report['versions']['torch']}.",
        "",
        "## Data",
        f"- {s['data']['train_pairs']} training and {s['data']['test_pairs']} held-out synthetic shape scenes "
        f"({s['data']['distinct_train_captions']} distinct training captions)",
        f"- byte-level BPE tokenizer trained on the captions: {s['tokenizer']['vocab_size']} tokens",
        "",
        "## Model",
        f"Preset `{s['model']['preset']}`: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in params.items()),
        "",
        "## Contrastive pretraining (ITC)",
        f"- {s['pretrain_itc']['steps']} steps, {s['pretrain_itc']['samples_per_s']} samples/s, "
        f"loss {s['pretrain_itc']['first_loss']:.3f} -> {s['pretrain_itc']['final_loss']:.3f}, "
        f"{s['pretrain_itc']['skipped_steps']} skipped steps",
        "",
        "![loss curve](loss.png)",
        "",
        "## Held-out image -> text retrieval",
        "",
        "| | R@1 | R@5 |",
        "|---|---|---|",
        f"| chance | {after['chance@1']:.3f} | {after['chance@5']:.3f} |",
        f"| before training | {before['r@1']:.3f} | {before['r@5']:.3f} |",
        f"| after training | {after['r@1']:.3f} | {after['r@5']:.3f} |",
        "",
        f"Checkpoint: `{s['checkpoint']['path']}`",
        "",
    ]
    return "\n".join(lines)


