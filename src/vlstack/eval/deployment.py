"""What deployment costs in accuracy: int8 models and ONNX Runtime image paths against fp32.

`vlstack.infer` makes the variants (`quantize`: torchao int8 Linear layers, with their size and
speed; `onnx`: the exported image path and its ORT int8 copies, with their numerical parity);
this module measures what they answer, on data it is given:
- held-out image-text pairs (`evaluate_pairs`): retrieval and matching, the metric a
  pretrained-only checkpoint is good at, with chance levels;
- benchmark folders in their official formats asked through the Engine (`run_eval`): each
  variant's accuracy and how many of its greedy answers are identical to fp32's;
- the Engine's image-feature cache: hit rate and the image path cold vs warm.
The demo's deployment stage (`vlstack.demo.deployment`) runs it all on synthetic data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vlstack.config import to_dict
from vlstack.eval.harness import EvalConfig, run_eval
from vlstack.eval.retrieval import evaluate_pairs
from vlstack.infer.engine import Engine, EngineConfig
from vlstack.infer.quantize import QuantizeConfig, size_and_speed
from vlstack.models.vlm import QwenImageModel

Batch = dict[str, Any]


@dataclass
class DeploymentEvalConfig:
    """How each deployment variant is measured against the fp32 model."""

    max_new_tokens: int = 8
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    """The int8 kernel and the timed passes of `size_and_speed`."""
    seed: int = 0


def compare_quantized(fp32: QwenImageModel, int8: QwenImageModel, tokenizer, config: DeploymentEvalConfig,
                      eval_dir: str | Path, pairs: tuple[Batch, list[str]] | None = None,
                      folders: dict[str, str] | None = None) -> dict[str, Any]:
    """fp32 vs int8: retrieval on held-out `pairs` (tensors and captions), accuracy and answer agreement on
    the benchmark `folders` (name -> folder), weight bytes and Linear-heavy speed."""
    report: dict[str, Any] = {"config": to_dict(config)}
    if pairs is not None:
        data, captions = pairs
        retrieval = {"fp32": evaluate_pairs(fp32, data, captions), "int8": evaluate_pairs(int8, data, captions)}
        retrieval["delta_points"] = {k: round(100 * (retrieval["int8"][k] - retrieval["fp32"][k]), 2)
                                     for k in ("r@1", "r@5", "itm_accuracy")}
        report["retrieval"] = retrieval
    if folders:
        suites = {name: suite_answers(Engine(model, tokenizer), folders, config, Path(eval_dir) / name)
                  for name, model in (("fp32", fp32), ("int8", int8))}
        report["suites"] = {**suites, **agreement(suites["fp32"], suites["int8"])}
    report.update(size_and_speed(fp32, int8, config.quantize))
    return report


def compare_onnx(model: QwenImageModel, tokenizer, onnx_dir: str | Path, exported: dict[str, Any],
                 folders: dict[str, str], config: DeploymentEvalConfig, eval_dir: str | Path,
                 reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """Accuracy and greedy-answer agreement on the benchmark `folders` of an Engine whose images go through
    each ONNX model, against the same Engine with the PyTorch image path (`reference`: its `suite_answers`,
    if known)."""
    if not folders:
        return {}
    reference = reference or suite_answers(Engine(model, tokenizer), folders, config, Path(eval_dir) / "pytorch")
    report: dict[str, Any] = {"pytorch": reference}
    for name, filename in exported["files"].items():
        engine = Engine(model, tokenizer, EngineConfig(vision_onnx=str(Path(onnx_dir) / filename)))
        answers = suite_answers(engine, folders, config, Path(eval_dir) / f"onnx-{name}")
        report[f"onnx-{name}"] = {**answers, **agreement(reference, answers)}
    return report


def suite_answers(engine: Engine, folders: dict[str, str], config: DeploymentEvalConfig, out_dir: Path
                  ) -> dict[str, Any]:
    """The benchmark `folders` through `engine`: each benchmark's primary metric (percent) and every answer."""
    results = run_eval(engine, EvalConfig(benchmarks=list(folders), out_dir=str(out_dir), paths=folders,
                                          max_new_tokens=config.max_new_tokens, seed=config.seed))
    return {"accuracy": {name: b["metrics"][b["primary"]] for name, b in results["benchmarks"].items()},
            "answers": {f"{name}/{row['id']}": row["raw"] for name, b in results["benchmarks"].items()
                        for row in b["items"]}}


def agreement(reference: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    """Accuracy deltas (points) and the fraction of answers identical to the reference's."""
    same = [candidate["answers"][key] == answer for key, answer in reference["answers"].items()]
    return {"delta_points": {k: round(candidate["accuracy"][k] - v, 2) for k, v in reference["accuracy"].items()},
            "identical_answers": sum(same) / len(same) if same else 1.0}


def feature_cache_figures(engine: Engine, images: list[Image.Image]) -> dict[str, float]:
    """Each image but the last asked about twice: the image path's latency cold (a miss: the vision tower
    runs) and warm (a hit: the cached tokens), and the cache's hit rate (1/2 by design). The last image
    warms the Engine up first, so one-time start-up costs do not count as a miss's."""
    scenes = list(images)
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
