"""`vlstack demo`: the whole stack end to end on a tiny model, on a laptop CPU, in minutes.

Stages run in order and each adds a section to `report.json` / `report.md`; so far:
pretraining (synthetic corpus, tokenizer, the tiny model, the mixed ITC + ITM + MLM
+ VTM loss, a resumable checkpoint), held-out retrieval / matching against chance,
and the six benchmarks on synthetic mini-suites through the inference Engine. Like
the CLI, this module sits on top of the library and nothing imports it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from vlstack.config import save_yaml, to_dict
from vlstack.eval.harness import EvalConfig, run_eval, versions
from vlstack.train.pretrain import PretrainConfig, PretrainDataConfig, run_pretraining
from vlstack.train.trainer import TrainConfig


@dataclass
class DemoConfig:
    """What the demo builds and how long it trains."""

    out_dir: str = "runs/demo"
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """The pretraining run; its out_dir is replaced by OUT_DIR/pretrain."""
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(synthetic_items=16))
    """Benchmarks on synthetic mini-suites in the official formats; its out_dir is replaced by OUT_DIR/eval."""

    @classmethod
    def quick(cls) -> "DemoConfig":
        """A one-minute run of every stage (used by the tests)."""
        return cls(
            out_dir="runs/demo-quick",
            pretrain=PretrainConfig(
                data=PretrainDataConfig(train_samples=1500, test_samples=200),
                train=TrainConfig(steps=100, batch_size=32, lr=1e-3, warmup_steps=10, log_every=5),
            ),
            eval=EvalConfig(synthetic_items=4),
        )


def run_demo(config: DemoConfig) -> dict:
    """Run every stage; returns the report (also written to `out_dir`)."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(config, out / "demo_config.yaml")
    report: dict = {"config": to_dict(config), "versions": versions(), "stages": {}}
    started = time.perf_counter()

    t = time.perf_counter()
    pretrain_dir = out / "pretrain"
    (pretrain_dir / "train_log.jsonl").unlink(missing_ok=True)
    results = run_pretraining(dataclasses.replace(config.pretrain, out_dir=str(pretrain_dir)))
    history = [r for r in results["history"] if not r["skipped"]]
    report["stages"]["pretrain"] = {
        "objective": config.pretrain.objective,
        "parameters": results["parameters"],
        "steps": results["steps"],
        "first_loss": history[0]["loss"],
        "final_loss": history[-1]["loss"],
        "final_losses": {k: history[-1][k] for k in ("itc", "itm", "mlm", "vtm") if k in history[-1]},
        "skipped_steps": sum(r["skipped"] for r in results["history"]),
        "before_training": results["before_training"],
        "after_training": results["after_training"],
        "checkpoint": results["checkpoint"],
        "seconds": round(time.perf_counter() - t, 1),
    }
    _plot_losses(history, out / "loss.png")

    t = time.perf_counter()
    evaluation = run_eval(results["checkpoint"], dataclasses.replace(config.eval, out_dir=str(out / "eval")))
    report["stages"]["eval"] = {
        "benchmarks": {name: {"metric": b["primary"], "value": b["metrics"][b["primary"]], "questions": b["count"]}
                       for name, b in evaluation["benchmarks"].items()},
        "report": str(out / "eval" / "report.md"),
        "seconds": round(time.perf_counter() - t, 1),
    }

    report["total_seconds"] = round(time.perf_counter() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / "report.md").write_text(_markdown(report, out), encoding="utf-8")
    return report


def _plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    steps = [r["step"] for r in history]
    ax.plot(steps, [r["loss"] for r in history], label="total", linewidth=2)
    for name in ("itc", "itm", "mlm", "vtm"):
        if name in history[0]:
            ax.plot(steps, [r[name] for r in history], label=name, alpha=0.8)
    ax.set(xlabel="step", ylabel="loss", title="Pretraining losses")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _markdown(report: dict, out_dir: Path) -> str:
    p = report["stages"]["pretrain"]
    before, after = p["before_training"], p["after_training"]
    losses = ", ".join(f"{k} {v:.3f}" for k, v in p["final_losses"].items())
    lines = [
        "# vlstack demo report",
        "",
        f"Total time: {report['total_seconds']} s on {report['versions']['machine']}, "
        f"torch {report['versions']['torch']}.",
        "",
        f"## Pretraining ({p['objective']})",
        "Model: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in p["parameters"].items()),
        "",
        f"- {p['steps']} steps in {p['seconds']} s; loss {p['first_loss']:.3f} -> {p['final_loss']:.3f} "
        f"({losses}); {p['skipped_steps']} skipped steps",
        f"- checkpoint: `{p['checkpoint']}`",
        "",
        "![loss curves](loss.png)",
        "",
        "## Held-out evaluation",
        "",
        "| | image->text R@1 | R@5 | ITM accuracy |",
        "|---|---|---|---|",
        f"| chance | {after['chance@1']:.3f} | {after['chance@5']:.3f} | {after['itm_chance']:.3f} |",
        f"| before training | {before['r@1']:.3f} | {before['r@5']:.3f} | {before['itm_accuracy']:.3f} |",
        f"| after training | {after['r@1']:.3f} | {after['r@5']:.3f} | {after['itm_accuracy']:.3f} |",
        "",
        "## Benchmarks (synthetic mini-suites in the official formats)",
        "",
        "The pretrained model has had no instruction tuning yet, so it does not answer questions: these",
        "numbers check the evaluation path end to end, not the model. Full results: "
        f"[{report['stages']['eval']['report']}]({Path(report['stages']['eval']['report']).relative_to(out_dir)}).",
        "",
        "| benchmark | metric | value | questions |",
        "|---|---|---|---|",
        *[f"| {name} | {b['metric']} | {b['value']:.1f} | {b['questions']} |"
          for name, b in report["stages"]["eval"]["benchmarks"].items()],
        "",
    ]
    return "\n".join(lines)
