"""The demo's deployment stage: int8 and ONNX variants of the aligned model measured against fp32.

The synthetic inputs are written first (held-out pairs, suite folders in the official formats,
calibration and check images for ONNX Runtime); then `vlstack.infer` makes the variants and
`vlstack.eval.deployment` measures them, as they would for a user's own data.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlstack import checkpoint
from vlstack.checkpoint import load_model
from vlstack.data.loader import pairs_to_tensors
from vlstack.eval.benchmarks import get_benchmark
from vlstack.eval.deployment import (
    DeploymentEvalConfig,
    compare_onnx,
    compare_quantized,
    feature_cache_figures,
)
from vlstack.files import write_json
from vlstack.infer.engine import Engine
from vlstack.infer.onnx import OnnxExportConfig, export_checkpoint
from vlstack.infer.quantize import quantize_model
from vlstack.models.tokenizer import load_tokenizer
from vlstack.synthetic.scenes import shape_scenes, split_seed
from vlstack.synthetic.suites import WRITERS

REPORT_NAME = "deployment_report.json"


@dataclass
class DemoDeploymentConfig:
    """Sizes of the deployment stage's measurements."""

    heldout_pairs: int = 256
    """Held-out image-caption pairs (shape scenes of the test split) for retrieval and ITM."""
    max_text_tokens: int = 32
    benchmarks: list[str] = field(default_factory=lambda: ["vqav2", "gqa", "aokvqa"])
    """Synthetic suites asked through the Engine of each variant."""
    suite_items: int = 16
    calibration_images: int = 32
    """Scenes of the val split that calibrate ONNX Runtime's static int8 model."""
    check_images: int = 16
    """Scenes of the test split on which each ONNX model is compared with PyTorch."""
    cache_images: int = 16
    """Scenes asked about twice for the feature cache's figures."""
    eval: DeploymentEvalConfig = field(default_factory=DeploymentEvalConfig)
    seed: int = 0


def deployment_figures(checkpoint_dir: str | Path, out_dir: str | Path, config: DemoDeploymentConfig
                       ) -> dict[str, Any]:
    """int8 accuracy delta and speed ratio, ONNX parity, ORT int8 deltas, and the Engine's feature cache
    (hit rate, cold vs warm image path), for an fp32 checkpoint; writes OUT/deployment_report.json."""
    started = time.perf_counter()
    out = Path(out_dir)
    tokenizer = load_tokenizer(Path(checkpoint_dir) / checkpoint.TOKENIZER_DIR)
    fp32 = load_model(checkpoint_dir)
    test_seed = split_seed(config.seed, "test")
    scenes = shape_scenes(config.heldout_pairs, seed=test_seed)
    captions = [s.caption for s in scenes]
    pairs = pairs_to_tensors([s.image for s in scenes], captions, tokenizer, fp32.config.vision,
                             config.max_text_tokens, "encode held-out pairs"), captions
    folders = write_suites(out / "suites", config)
    int8 = quantize_model(copy.deepcopy(fp32), "int8-dynamic", config.eval.quantize.kernel)
    quantized = compare_quantized(fp32, int8, tokenizer, config.eval, out / "eval", pairs, folders)
    export = OnnxExportConfig(calibration_images=config.calibration_images, check_images=config.check_images,
                              calibration_dir=str(write_images(out / "calibration", config.calibration_images,
                                                               split_seed(config.seed, "val"))),
                              check_dir=str(write_images(out / "check", config.check_images, test_seed)))
    exported = export_checkpoint(checkpoint_dir, out / "onnx", export, model=fp32)
    onnx = compare_onnx(fp32, tokenizer, out / "onnx", exported, folders, config.eval, out / "eval",
                        reference=quantized.get("suites", {}).get("fp32"))
    cache_images = [s.image for s in shape_scenes(config.cache_images + 1, seed=test_seed)]
    retrieval = quantized.get("retrieval", {})
    figures = {
        "int8_dynamic": {
            "retrieval_delta_points": retrieval.get("delta_points"),
            "retrieval_fp32": {k: retrieval["fp32"][k] for k in ("r@1", "chance@1", "itm_accuracy")},
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
        "feature_cache": feature_cache_figures(Engine(fp32, tokenizer), cache_images),
    }
    report = {"figures": figures, "quantization": quantized, "onnx_export": exported, "onnx_engine": onnx,
              "seconds": round(time.perf_counter() - started, 2)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / REPORT_NAME, report)
    return report


def write_suites(root: Path, config: DemoDeploymentConfig) -> dict[str, str]:
    """The chosen synthetic suites under `root`; returns benchmark name -> folder."""
    folders = {}
    for name in config.benchmarks:
        folder = root / get_benchmark(name).data_dir
        WRITERS[folder.name](folder, config.suite_items, config.seed)
        folders[name] = str(folder)
    return folders


def write_images(folder: Path, n: int, seed: int) -> Path:
    """The first `n` shape scenes of corpus `seed` as PNG files, named in order."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, scene in enumerate(shape_scenes(n, seed=seed)):
        scene.image.save(folder / f"scene-{index:05d}.png")
    return folder
