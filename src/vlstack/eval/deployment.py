"""What deployment costs in accuracy and buys in speed: int8 models and ONNX Runtime image paths vs fp32.

`vlstack.infer` makes the variants (`quantize`: torchao int8 Linear layers; `onnx`: the
exported image path and its ORT int8 copies); this module measures them, because the
measures are evaluations:
- held-out image-text retrieval and matching (`evaluate_pairs`), the metric a
  pretrained-only checkpoint is good at, with chance levels;
- the synthetic mini-suites asked through the Engine (`run_eval`): each variant's
  accuracy and how many of its greedy answers are identical to fp32's;
- the time of the Linear-heavy passes (image path, LM prefill), fp32 over int8 (best of
  interleaved repeats: the cores may be shared).
`deployment_figures` runs it all for the demo.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlstack import checkpoint
from vlstack.config import to_dict
from vlstack.data.loader import pairs_to_tensors
from vlstack.synthetic.scenes import shape_scenes, split_seed
from vlstack.eval.benchmarks import get_benchmark
from vlstack.eval.harness import EvalConfig, run_eval
from vlstack.eval.retrieval import evaluate_pairs
from vlstack.synthetic.suites import WRITERS
from vlstack.infer.engine import Engine, EngineConfig
from vlstack.infer.onnx import OnnxExportConfig, export_checkpoint
from vlstack.infer.quantize import (
    Kernel,
    best_seconds,
    linear_heavy_passes,
    load_model,
    quantize_checkpoint,
    quantize_model,
    weight_bytes,
)
from vlstack.models.tokenizer import load_tokenizer
from vlstack.models.vlm import QwenImageModel

REPORT_NAME = "deployment_report.json"


@dataclass
class DeploymentEvalConfig:
    """How each deployment variant is measured against the fp32 model."""

    heldout_pairs: int = 256
    """Held-out image-caption pairs (synthetic scenes of the test split) for retrieval and ITM; 0 skips."""
    max_text_tokens: int = 32
    benchmarks: list[str] = field(default_factory=lambda: ["vqav2", "gqa", "aokvqa"])
    """Synthetic mini-suites asked through the Engine; empty skips them."""
    suite_items: int = 16
    """Questions per suite."""
    max_new_tokens: int = 8
    speed_batch: int = 8
    """Images (and text rows) per timed pass."""
    speed_tokens: int = 64
    """Text length of the timed LM prefill."""
    speed_repeats: int = 5
    kernel: Kernel = "auto"
    """The int8-dynamic matmul kernel (see vlstack.infer.quantize)."""
    seed: int = 0


@dataclass
class OnnxDeploymentConfig:
    """`vlstack export-onnx`: the export, and the Engine evaluation of each exported model."""

    export: OnnxExportConfig = field(default_factory=OnnxExportConfig)
    eval: DeploymentEvalConfig = field(default_factory=DeploymentEvalConfig)


def quantize_and_evaluate(source: str | Path, out: str | Path, method: str,
                          config: DeploymentEvalConfig | None = None) -> dict[str, Any]:
    """`vlstack quantize`: write the int8 checkpoint `out`, then measure it against `source`;
    the report goes to `out/deployment_report.json`."""
    config = config or DeploymentEvalConfig()
    started = time.perf_counter()
    out = quantize_checkpoint(source, out, method)
    fp32 = load_model(source)
    report = compare_quantized(fp32, load_model(out, config.kernel), _tokenizer(source), config, out / "eval")
    report.update(method=method, source=str(source), checkpoint=str(out),
                  seconds=round(time.perf_counter() - started, 2))
    _write(report, out / REPORT_NAME)
    return report


def export_and_evaluate(source: str | Path, out: str | Path,
                        config: OnnxDeploymentConfig | None = None) -> dict[str, Any]:
    """`vlstack export-onnx`: export the image path (fp32, ORT int8 dynamic and static), check parity,
    then ask the suites through an Engine on each; the report goes to `out/deployment_report.json`."""
    config = config or OnnxDeploymentConfig()
    started = time.perf_counter()
    out = Path(out)
    model = load_model(source)
    exported = export_checkpoint(source, out, config.export, model=model)
    engine = compare_onnx(model, _tokenizer(source), out, exported, config.eval, out / "eval")
    report = {"export": exported, "engine": engine, "seconds": round(time.perf_counter() - started, 2)}
    _write(report, out / REPORT_NAME)
    return report


def compare_quantized(fp32: QwenImageModel, int8: QwenImageModel, tokenizer, config: DeploymentEvalConfig,
                      eval_dir: str | Path) -> dict[str, Any]:
    """Retrieval, suite accuracy and answer agreement, weight bytes and Linear-heavy speed: fp32 vs int8."""
    report: dict[str, Any] = {"config": to_dict(config)}
    if config.heldout_pairs:
        data, captions = heldout_pairs(tokenizer, fp32.config.vision.image_size, config)
        retrieval = {"fp32": evaluate_pairs(fp32, data, captions), "int8": evaluate_pairs(int8, data, captions)}
        retrieval["delta_points"] = {k: round(100 * (retrieval["int8"][k] - retrieval["fp32"][k]), 2)
                                     for k in ("r@1", "r@5", "itm_accuracy")}
        report["retrieval"] = retrieval
    if config.benchmarks:
        suites = {"fp32": suite_answers(Engine(fp32, tokenizer), config, Path(eval_dir) / "fp32"),
                  "int8": suite_answers(Engine(int8, tokenizer), config, Path(eval_dir) / "int8")}
        report["suites"] = {**suites, **agreement(suites["fp32"], suites["int8"])}
    report["weight_bytes"] = {"fp32": weight_bytes(fp32), "int8": weight_bytes(int8)}
    speed = best_seconds({name: linear_heavy_passes(model, config.speed_batch, config.speed_tokens, config.seed)
                          for name, model in (("fp32", fp32), ("int8", int8))}, config.speed_repeats)
    speed["speedup"] = {part: round(speed["fp32"][part] / speed["int8"][part], 3) for part in speed["fp32"]}
    report["speed_seconds"] = speed
    return report


def compare_onnx(model: QwenImageModel, tokenizer, onnx_dir: str | Path, exported: dict[str, Any],
                 config: DeploymentEvalConfig, eval_dir: str | Path,
                 reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """Suite accuracy and greedy-answer agreement of an Engine whose images go through each ONNX model,
    against the same Engine with the PyTorch image path (`reference`: its `suite_answers`, if known)."""
    if not config.benchmarks:
        return {}
    reference = reference or suite_answers(Engine(model, tokenizer), config, Path(eval_dir) / "pytorch")
    report: dict[str, Any] = {"pytorch": reference}
    for name, filename in exported["files"].items():
        engine = Engine(model, tokenizer, EngineConfig(vision_onnx=str(Path(onnx_dir) / filename)))
        answers = suite_answers(engine, config, Path(eval_dir) / f"onnx-{name}")
        report[f"onnx-{name}"] = {**answers, **agreement(reference, answers)}
    return report


def suite_answers(engine: Engine, config: DeploymentEvalConfig, out_dir: Path) -> dict[str, Any]:
    """The synthetic suites through `engine`: each benchmark's primary metric (percent) and every answer."""
    folders = _write_suites(out_dir.parent / "suites", config)
    results = run_eval(engine, EvalConfig(benchmarks=list(config.benchmarks), out_dir=str(out_dir), paths=folders,
                                          max_new_tokens=config.max_new_tokens, seed=config.seed))
    return {"accuracy": {name: b["metrics"][b["primary"]] for name, b in results["benchmarks"].items()},
            "answers": {f"{name}/{row['id']}": row["raw"] for name, b in results["benchmarks"].items()
                        for row in b["items"]}}


def agreement(reference: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    """Accuracy deltas (points) and the fraction of answers identical to the reference's."""
    same = [candidate["answers"][key] == answer for key, answer in reference["answers"].items()]
    return {"delta_points": {k: round(candidate["accuracy"][k] - v, 2) for k, v in reference["accuracy"].items()},
            "identical_answers": sum(same) / len(same) if same else 1.0}


def quantization_summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal: accuracy deltas, identical answers, speed-ups, size."""
    lines = [f"int8 checkpoint ({report['method']}): {report['checkpoint']}"]
    if "retrieval" in report:
        r = report["retrieval"]
        lines.append(f"held-out R@1 fp32 {100 * r['fp32']['r@1']:.1f} -> int8 {100 * r['int8']['r@1']:.1f} "
                     f"(chance {100 * r['fp32']['chance@1']:.1f}); ITM accuracy {100 * r['fp32']['itm_accuracy']:.1f} "
                     f"-> {100 * r['int8']['itm_accuracy']:.1f} (chance 50.0)")
    if "suites" in report:
        lines.append(_suite_line("suites", report["suites"]))
    speedup = ", ".join(f"{part} {x:.2f}x" for part, x in report["speed_seconds"]["speedup"].items())
    sizes = report["weight_bytes"]
    lines.append(f"speed-up over fp32: {speedup}; weights {sizes['fp32'] / 2**20:.1f} MiB -> "
                 f"{sizes['int8'] / 2**20:.1f} MiB; report: {report['checkpoint']}/{REPORT_NAME}")
    return "\n".join(lines)


def onnx_summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal: fp32 parity, each model's token deltas and suite agreement."""
    export = report["export"]
    parity = ", ".join(f"batch {b}: {d:.1e}" for b, d in export["parity_max_abs_diff"].items())
    lines = [f"ONNX fp32 vs PyTorch max abs diff: {parity}"]
    for name, tokens in export["vs_pytorch"].items():
        line = f"{name}: max abs diff {tokens['max_abs_diff']:.2e}, mean cosine {tokens['mean_cosine']:.5f}"
        if f"onnx-{name}" in report["engine"]:
            line += "; " + _suite_line("suites", report["engine"][f"onnx-{name}"])
        lines.append(line)
    return "\n".join(lines)


def _suite_line(title: str, suites: dict[str, Any]) -> str:
    deltas = ", ".join(f"{name} {delta:+.1f}" for name, delta in suites["delta_points"].items())
    return f"{title}: {100 * suites['identical_answers']:.0f}% answers identical to fp32, accuracy delta {deltas}"


def heldout_pairs(tokenizer, image_size: int, config: DeploymentEvalConfig
                  ) -> tuple[dict[str, Any], list[str]]:
    """Synthetic scenes of the test split, encoded as retrieval pairs, and their captions."""
    scenes = shape_scenes(config.heldout_pairs, seed=split_seed(config.seed, "test"))
    captions = [s.caption for s in scenes]
    data = pairs_to_tensors([s.image for s in scenes], captions, tokenizer, image_size, config.max_text_tokens,
                            "encode held-out pairs")
    return data, captions


def deployment_figures(checkpoint_dir: str | Path, out_dir: str | Path, quick: bool = False) -> dict[str, Any]:
    """The demo's deployment stage on an fp32 checkpoint: int8 accuracy delta and speed ratio, ONNX
    parity, ORT int8 deltas, and the Engine's feature cache (hit rate, cold vs warm image path)."""
    started = time.perf_counter()
    out = Path(out_dir)
    config = DeploymentEvalConfig(heldout_pairs=64, benchmarks=["vqav2"], suite_items=4, speed_batch=4,
                                  speed_tokens=32, speed_repeats=2) if quick else DeploymentEvalConfig()
    export = OnnxExportConfig(calibration_images=4, check_images=4) if quick else OnnxExportConfig()
    tokenizer = _tokenizer(checkpoint_dir)
    fp32 = load_model(checkpoint_dir)
    int8 = quantize_model(copy.deepcopy(fp32), "int8-dynamic", config.kernel)
    quantized = compare_quantized(fp32, int8, tokenizer, config, out / "eval")
    exported = export_checkpoint(checkpoint_dir, out / "onnx", export, model=fp32)
    onnx = compare_onnx(fp32, tokenizer, out / "onnx", exported, config, out / "eval",
                        reference=quantized.get("suites", {}).get("fp32"))
    figures = {
        "int8_dynamic": {
            "retrieval_delta_points": quantized.get("retrieval", {}).get("delta_points"),
            "retrieval_fp32": _pick(quantized.get("retrieval", {}).get("fp32"), "r@1", "chance@1", "itm_accuracy"),
            "suite_delta_points": quantized.get("suites", {}).get("delta_points"),
            "identical_answers": quantized.get("suites", {}).get("identical_answers"),
            "speedup": quantized["speed_seconds"]["speedup"],
            "weight_bytes": quantized["weight_bytes"],
        },
        "onnx": {
            "parity_max_abs_diff": max(exported["parity_max_abs_diff"].values()),
            "tokens_vs_pytorch": exported["vs_pytorch"],
            "identical_answers": {k: v["identical_answers"] for k, v in onnx.items() if k != "pytorch"},
            "suite_delta_points": {k: v["delta_points"] for k, v in onnx.items() if k != "pytorch"},
        },
        "feature_cache": feature_cache_figures(Engine(fp32, tokenizer), 4 if quick else 16, config.seed),
    }
    report = {"figures": figures, "quantization": quantized, "onnx_export": exported, "onnx_engine": onnx,
              "seconds": round(time.perf_counter() - started, 2)}
    _write(report, out / REPORT_NAME)
    return report


def feature_cache_figures(engine: Engine, images: int, seed: int = 0) -> dict[str, float]:
    """Each of `images` scenes asked about twice: the image path's latency cold (a miss: the vision
    tower runs) and warm (a hit: the cached tokens), and the cache's hit rate (1/2 by design)."""
    scenes = [s.image for s in shape_scenes(images + 1, seed=split_seed(seed, "test"))]
    engine.visual_tokens(scenes.pop())  # one-time start-up costs are not a cache miss's
    engine.cache.clear()
    before = engine.cache.stats()
    cold, warm = [], []
    for timings in (cold, warm):
        for image in scenes:
            started = time.perf_counter()
            engine.visual_tokens(image)
            timings.append(time.perf_counter() - started)
    after = engine.cache.stats()
    hits, misses = after.hits - before.hits, after.misses - before.misses
    cold_ms, warm_ms = 1000 * sum(cold) / len(cold), 1000 * sum(warm) / len(warm)
    return {"hit_rate": hits / (hits + misses), "cold_ms": round(cold_ms, 3), "warm_ms": round(warm_ms, 4),
            "speedup": round(cold_ms / warm_ms, 1)}


def _write_suites(root: Path, config: DeploymentEvalConfig) -> dict[str, str]:
    """The chosen synthetic suites under `root`, written once: a suite is a pure function of
    (items, seed), which name its folder. Returns benchmark name -> folder."""
    folders = {}
    for name in config.benchmarks:
        folder = root / f"n{config.suite_items}-seed{config.seed}" / get_benchmark(name).data_dir
        if not folder.is_dir():
            WRITERS[folder.name](folder, config.suite_items, config.seed)
        folders[name] = str(folder)
    return folders


def _tokenizer(directory: str | Path):
    return load_tokenizer(Path(directory) / checkpoint.TOKENIZER_DIR)


def _pick(values: dict[str, float] | None, *keys: str) -> dict[str, float] | None:
    return None if values is None else {k: values[k] for k in keys}


def _write(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
