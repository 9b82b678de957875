"""`vlstack demo`: the whole stack end to end on a tiny model, on a laptop CPU, in minutes.

The demo walks the road a user's data takes, on data it generates: synthetic corpora are
written as shards and files first (`vlstack.synthetic`), then each stage reads them through
the same library calls as the CLI commands. Stages run in order and each adds a section to
`report.json` / `report.md`: pretraining (the scene corpus cleaned by `data clean` first, the
tiny model, a tokenizer, the mixed ITC + ITM + MLM + VTM loss streamed from the cleaned shards,
a resumable checkpoint) with held-out retrieval / matching against chance;
cleaning of a spoiled corpus with the pretrained model as the relevance scorer; progressive
fine-tuning and DPO; the six benchmarks on suites in their official formats; hallucination;
deployment (int8, ONNX, the Engine's caches); and the applications. Sizes come from
`DemoConfig` (`recipes.py`); only the CLI imports this module.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import time
from pathlib import Path

from PIL import Image

from vlstack.align.run import run_alignment
from vlstack.apps.embodied import run_minigrid_episodes, scripted_episode
from vlstack.config import save_yaml, to_dict
from vlstack.data.clean.pipeline import CleanConfig, load_scorer
from vlstack.data.clean.relevance import calibrate_scorer
from vlstack.data.clean.run import clean
from vlstack.data.loader import caption_pairs
from vlstack.data.schema import Sample
from vlstack.data.shards import read_shards
from vlstack.data.stream import StreamSource
from vlstack.demo.apps import inspection_demo, medical_demo, pointcloud_demo
from vlstack.demo.deployment import deployment_figures
from vlstack.demo.recipes import DemoAppsConfig, DemoCleanConfig, DemoConfig
from vlstack.demo.report import markdown
from vlstack.errors import VlstackError
from vlstack.eval.hallucination import run_hallucination, summarize
from vlstack.eval.harness import run_eval, versions
from vlstack.files import write_json
from vlstack.models.tokenizer import train_tokenizer
from vlstack.synthetic.corpus import synthesize, write_scenes
from vlstack.synthetic.hallucination import write_hallucination_suite
from vlstack.synthetic.instructions import instruction_texts, write_instructions
from vlstack.synthetic.preferences import write_preferences
from vlstack.synthetic.suites import write_suites
from vlstack.synthetic.truth import score_cleaning
from vlstack.train.finetune import DatasetSpec, run_finetune
from vlstack.train.pretrain import run_pretraining

PRETRAIN_TERMS = ("itc", "itm", "mlm", "vtm", "word_align")
"""The pretraining loss terms the report and the loss plot show, where the run has them."""


def run_demo(config: DemoConfig) -> dict:
    """Run every stage; returns the report (also written to `out_dir`)."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(config, out / "demo_config.yaml")
    report: dict = {"config": to_dict(config), "versions": versions(), "stages": {}}
    started = time.perf_counter()

    report["stages"]["pretrain"] = _pretrain_stage(config, out)
    checkpoint = report["stages"]["pretrain"]["checkpoint"]
    report["stages"]["clean"] = _clean_stage(config.clean, checkpoint, out / "clean")
    report["stages"]["finetune"] = _finetune_stage(config, checkpoint, out)
    report["stages"]["align"] = _align_stage(config, report["stages"]["finetune"]["checkpoint"], out)
    checkpoint = report["stages"]["align"]["checkpoint"]  # the instruction-tuned, aligned model from here on
    report["stages"]["eval"] = _eval_stage(config, checkpoint, out)
    report["stages"]["hallucination"] = _hallucination_stage(config, checkpoint, out)
    report["stages"]["deployment"] = deployment_figures(checkpoint, out / "deployment", config.deployment)
    report["stages"]["apps"] = _apps_stage(config.apps, checkpoint, out / "apps")

    report["total_seconds"] = round(time.perf_counter() - started, 1)
    write_json(out / "report.json", report)
    (out / "report.md").write_text(markdown(report, out), encoding="utf-8")
    return report


def _pretrain_stage(config: DemoConfig, out: Path) -> dict:
    """Write the scene corpus, clean it as a user's corpus is cleaned (`vlstack data clean` with its
    defaults; no relevance model exists yet), write a tokenizer (the captions and the fine-tuning texts,
    so that the instruction data's questions, answers and refusals are words), then pretrain streaming
    the cleaned shards."""
    t = time.perf_counter()
    seed = config.pretrain.train.seed
    data = out / "data" / "pretrain"
    shutil.rmtree(data, ignore_errors=True)
    cleaned = {}
    for split, n, split_seed in (("train", config.corpus.train_samples, seed), ("test", config.corpus.test_samples,
                                                                                  seed + 10_000)):
        raw = write_scenes(data / f"{split}-raw", n, split_seed)
        cleaned[split] = clean(raw, data / split, CleanConfig(), workers=config.clean.workers)
    train, test = data / "train", data / "test"
    captions = caption_pairs(train)[1]
    tokenizer = train_tokenizer(captions + instruction_texts(), vocab_size=config.pretrain.model.language.vocab_size)
    tokenizer.save_pretrained(str(data / "tokenizer"))
    pretrain_dir = out / "pretrain"
    (pretrain_dir / "train_log.jsonl").unlink(missing_ok=True)
    pretrain = dataclasses.replace(config.pretrain, out_dir=str(pretrain_dir), tokenizer=str(data / "tokenizer"),
                                   data=dataclasses.replace(config.pretrain.data, sources=[StreamSource(str(train))],
                                                            test=str(test)))
    results = run_pretraining(pretrain)
    history = [r for r in results["history"] if "loss" in r and not r["skipped"]]
    _plot_losses(history, out / "loss.png")
    return {
        "objective": config.pretrain.objective,
        "parameters": results["parameters"],
        "steps": results["steps"],
        "first_loss": history[0]["loss"],
        "final_loss": history[-1]["loss"],
        "final_losses": {k: history[-1][k] for k in PRETRAIN_TERMS if k in history[-1]},
        "skipped_steps": sum(r.get("skipped") is True for r in results["history"]),
        "corpus": {split: {k: summary[k] for k in ("total", "kept", "by_first_reason")}
                   for split, summary in cleaned.items()},
        "before_training": results["before_training"],
        "after_training": results["after_training"],
        "checkpoint": results["checkpoint"],
        "seconds": round(time.perf_counter() - t, 1),
    }


def _clean_stage(config: DemoCleanConfig, checkpoint: str, out: Path) -> dict:
    """Spoil a corpus, then clean it with the pretrained model scoring relevance; recall per defect."""
    t = time.perf_counter()
    trusted_dir, spoiled_dir = out / "trusted", out / "spoiled"
    synthesize("caption", config.trusted, trusted_dir, seed=1, split="val")
    synthesize("caption", config.samples, spoiled_dir, defects=config.defect_rate, seed=1, samples_per_shard=200)
    cfg = CleanConfig()
    cfg.perplexity.reference = str(trusted_dir)
    cfg.relevance.model = checkpoint
    scorer = load_scorer(cfg.relevance)
    trusted = [s for s in read_shards(trusted_dir) if isinstance(s, Sample)]
    calibration = calibrate_scorer(scorer, [Image.open(io.BytesIO(s.images[0].data)).convert("RGB") for s in trusted],
                                   [s.text for s in trusted], max_clean_drop=0.02)
    cfg.relevance.min_score = calibration.threshold
    summary = clean(spoiled_dir, out / "cleaned", cfg, workers=config.workers, scorer=scorer)
    truth = score_cleaning(spoiled_dir, out / "cleaned")
    return {
        "samples": summary["total"],
        "kept": summary["kept"],
        "rejected": summary["rejected"],
        "unaccounted": len(summary["unaccounted"]),
        "relevance_threshold": round(calibration.threshold, 4),
        "recall": {name: row["recall"] for name, row in truth["defects"].items()},
        "clean_wrongly_dropped_rate": truth["clean"]["wrongly_dropped_rate"],
        "natural_duplicates": truth["clean"]["natural_duplicates"],
        "samples_per_second": summary["samples_per_second"],
        "report": str(out / "cleaned" / "report.md"),
        "seconds": round(time.perf_counter() - t, 1),
    }


def _finetune_stage(config: DemoConfig, checkpoint: str, out: Path) -> dict:
    """Write every instruction dataset the stages, their validation and the held-out checks name (train, val and
    test splits), then run the progressive plan from the pretrained checkpoint."""
    stages = config.finetune.stages
    seed = config.finetune.train.seed
    train = _write_datasets([spec for stage in stages for spec in stage.datasets], "train", seed, out)
    validation = _write_datasets(config.finetune.validation, "val", seed, out)
    held_out = _write_datasets(config.finetune.eval.datasets, "test", seed, out)
    finetune = dataclasses.replace(
        config.finetune, base=checkpoint, out_dir=str(out / "finetune"),
        stages=[dataclasses.replace(stage, datasets=[_located(spec, train) for spec in stage.datasets])
                for stage in stages],
        validation=[_located(spec, validation) for spec in config.finetune.validation],
        eval=dataclasses.replace(config.finetune.eval,
                                 datasets=[_located(spec, held_out) for spec in config.finetune.eval.datasets]))
    shutil.rmtree(finetune.out_dir, ignore_errors=True)
    results = run_finetune(finetune)
    interrupted = [name for name, stage in results["stages"].items() if stage["status"] == "interrupted"]
    if interrupted:
        raise VlstackError(f"fine-tuning stage {interrupted[0]!r} was interrupted (SIGTERM); run the demo again")
    return {
        "stages": {name: {k: stage.get(k) for k in ("steps", "first_loss", "final_loss", "samples", "seconds", "fit")}
                   for name, stage in results["stages"].items()},
        "eval": results["eval"],
        "checkpoint": results["checkpoint"],
        "seconds": results["seconds"],
    }


def _write_datasets(specs: list[DatasetSpec], split: str, seed: int, out: Path) -> dict[str, str]:
    """Each named synthetic dataset written once, as many samples as its largest use; name -> folder."""
    sizes: dict[str, int] = {}
    for spec in specs:
        sizes[spec.name] = max(sizes.get(spec.name, 0), spec.samples or 0)
    folders = {}
    for name, n in sizes.items():
        folder = out / "data" / "instructions" / f"{name}-{split}"
        shutil.rmtree(folder, ignore_errors=True)
        folders[name] = str(write_instructions(folder, name, n, seed, split))
    return folders


def _located(spec: DatasetSpec, folders: dict[str, str]) -> DatasetSpec:
    return dataclasses.replace(spec, path=folders[spec.name])


def _align_stage(config: DemoConfig, checkpoint: str, out: Path) -> dict:
    """DPO from the fine-tuned checkpoint on shapes_vqa pairs (train split) with held-out test pairs."""
    t = time.perf_counter()
    data = config.align.data
    folder = out / "data" / "preferences"
    shutil.rmtree(folder, ignore_errors=True)
    seed = config.finetune.train.seed
    train = write_preferences(folder / "train", data.train_items, "train", seed=seed)
    held_out = write_preferences(folder / "test", data.eval_items, "test", seed=seed)
    align = dataclasses.replace(config.align, checkpoint=checkpoint, out_dir=str(out / "align"),
                                data=dataclasses.replace(data, train=str(train), held_out=str(held_out)))
    results = run_alignment(align)
    return {**{k: v for k, v in results.items() if k != "history"}, "seconds": round(time.perf_counter() - t, 1)}


def _eval_stage(config: DemoConfig, checkpoint: str, out: Path) -> dict:
    """The six benchmarks on synthetic suites written in their official formats."""
    t = time.perf_counter()
    data_root = out / "data" / "eval"
    write_suites(data_root, config.suite_items, config.eval.seed)
    evaluation = run_eval(checkpoint, dataclasses.replace(config.eval, data_root=str(data_root),
                                                          out_dir=str(out / "eval")))
    phrased = {}
    if config.trained_phrasing:
        templates = {k: v for k, v in config.trained_phrasing.items() if k in config.eval.benchmarks}
        phrased = run_eval(checkpoint, dataclasses.replace(config.eval, data_root=str(data_root), blind=False,
                                                           templates=templates, hallucination=None,
                                                           out_dir=str(out / "eval-trained-phrasing")))["benchmarks"]
    return {
        "benchmarks": {name: {"metric": b["primary"], "value": b["metrics"][b["primary"]], "interval": b["interval"],
                              "blind": b["blind"]["metrics"][b["primary"]] if "blind" in b else None,
                              "trained_phrasing": (phrased[name]["metrics"][b["primary"]] if name in phrased
                                                   else None),
                              "refused": b["refused"], "questions": b["count"]}
                       for name, b in evaluation["benchmarks"].items()},
        "report": str(out / "eval" / "report.md"),
        "seconds": round(time.perf_counter() - t, 1),
    }


def _hallucination_stage(config: DemoConfig, checkpoint: str, out: Path) -> dict:
    """Write a hallucination suite of the configured sizes; calibrate the entity-level detector on the
    pretrained ITC scorer (stored with the checkpoint), then its AUROC, POPE and CHAIR through the Engine."""
    h = config.hallucination
    suite = write_hallucination_suite(out / "data" / "hallucination", h.calibration_scenes, h.test_scenes,
                                      h.pope_scenes, h.pope_sample_num, h.languages, h.seed)
    return summarize(run_hallucination(checkpoint, dataclasses.replace(h, data=str(suite)), out / "hallucination"))


def _apps_stage(config: DemoAppsConfig, checkpoint: str, out: Path) -> dict:
    """One short, checkable run of each application; all of them generate through the Engine."""
    t = time.perf_counter()
    return {
        "medical": medical_demo(checkpoint, out / "medical", config.study_scans, config.findings_tokens),
        "inspection": inspection_demo(checkpoint, out / "inspection", config.line_frames, config.analysis_tokens),
        # the article-sized encoder takes minutes on 2 cores; the narrow one shows the same learning
        "pointcloud": pointcloud_demo(),
        "embodied_scripted": scripted_episode(out / "embodied" / "scripted"),
        "embodied_model": run_minigrid_episodes(checkpoint, "MiniGrid-Empty-5x5-v0", out / "embodied" / "model",
                                                config.embodied),
        "seconds": round(time.perf_counter() - t, 1),
    }


def _plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    steps = [r["step"] for r in history]
    ax.plot(steps, [r["loss"] for r in history], label="total", linewidth=2)
    for name in PRETRAIN_TERMS:
        if name in history[0]:
            ax.plot(steps, [r[name] for r in history], label=name, alpha=0.8)
    ax.set(xlabel="step", ylabel="loss", title="Pretraining losses")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
