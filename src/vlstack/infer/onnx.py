"""ONNX export of the image path (vision tower + projector) and its int8 variants for ONNX Runtime.

The exported graph maps normalised pixels [B, 3, S, S] to the LM-space visual tokens
[B, Nv, Dt] that the Engine splices into the prompt, with a dynamic batch axis (the
dynamo exporter, which needs onnxscript). ONNX Runtime's quantization tool then makes two
int8 copies: dynamic (int8 weights, activations quantized per call) and static (weights
and activations int8, activation ranges calibrated on the user's images first, as the
article calibrates before converting). `export_checkpoint` writes all three and measures each
against PyTorch; `EngineConfig.vision_onnx` makes the Engine encode images through one.

onnxruntime, onnx and onnxscript are imported inside the functions that need them, so that
importing the Engine stays light.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from vlstack.checkpoint import load_model, quantization_of
from vlstack.config import to_dict
from vlstack.data.collate import image_to_tensor
from vlstack.errors import CheckpointError, ConfigError, DataError, InputError
from vlstack.files import write_json
from vlstack.models.config import VisionConfig
from vlstack.models.vlm import QwenImageModel

VISION_ONNX = "vision.onnx"
INT8_DYNAMIC_ONNX = "vision.int8-dynamic.onnx"
INT8_STATIC_ONNX = "vision.int8-static.onnx"
EXPORT_JSON = "export.json"
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "visual_tokens"
QUANTIZED_OPS = ["MatMul", "Gemm", "Conv"]
"""The Linear-heavy ops ORT quantizes; norms, softmax and the rest stay fp32."""


@dataclass
class OnnxExportConfig:
    """What `export_checkpoint` writes and how it checks it."""

    opset: int = 18
    calibration_images: int = 32
    """Images whose activation ranges calibrate the static int8 model."""
    calibration_dir: str | None = None
    """A folder of .png/.jpg images like those the model will see, to calibrate the static int8 model with;
    None: no static int8 model (ranges calibrated on anything else would not fit the real inputs)."""
    check_dir: str | None = None
    """A folder of .png/.jpg images on which each ONNX model is compared with PyTorch; None: seeded
    random pixels (enough for numerical parity; answers need real images)."""
    check_images: int = 16
    """Images (at most) of `check_dir`, or random ones, for the comparison."""
    parity_batch_sizes: tuple[int, ...] = (1, 3)
    """Batch sizes the fp32 parity check runs (the batch axis is dynamic)."""
    seed: int = 0


class VisualTokens(nn.Module):
    """The image path of the generation model: pixels [B, 3, S, S] -> visual tokens [B, Nv, Dt]."""

    def __init__(self, model: QwenImageModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.image_features(pixel_values)


def export_vision(model: QwenImageModel, path: str | Path, opset: int = 18) -> Path:
    """Export vision tower + projector to `path` with a dynamic batch axis (the dynamo exporter)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    size = model.config.vision.image_size
    example = torch.zeros(2, model.config.vision.in_channels, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.onnx.export(VisualTokens(model).eval(), (example,), dynamo=True, opset_version=opset,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes={INPUT_NAME: {0: batch}}, verbose=False)
    program.save(str(path))
    return path


def ort_session(path: str | Path):
    """An ONNX Runtime CPU session for the model at `path`."""
    import onnxruntime as ort
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no ONNX model at {path}; write one with `vlstack export-onnx`")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtVisualEncoder:
    """pixels [B, 3, S, S] -> visual tokens [B, Nv, Dt] through ONNX Runtime (what the Engine calls)."""

    def __init__(self, path: str | Path, model: QwenImageModel | None = None):
        self.path = Path(path)
        self.session = ort_session(self.path)
        if model is not None:
            self._check_fits(model)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        array = pixels.detach().float().cpu().numpy()
        tokens = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})[0]
        return torch.from_numpy(tokens).to(pixels.device)

    def _check_fits(self, model: QwenImageModel) -> None:
        """The ONNX graph must take this model's image size and give its token count and width."""
        size = model.config.vision.image_size
        expected_in = [model.config.vision.in_channels, size, size]
        expected_out = [model.num_image_tokens(), model.config.language.hidden_size]
        got_in = self.session.get_inputs()[0].shape[1:]
        got_out = self.session.get_outputs()[0].shape[1:]
        if got_in != expected_in or got_out != expected_out:
            raise ConfigError(f"{self.path} maps images {got_in} -> tokens {got_out}, but this model needs "
                              f"{expected_in} -> {expected_out}; export it from this checkpoint")


def quantize_onnx_dynamic(source: str | Path, target: str | Path) -> Path:
    """int8 weights of the Linear-heavy ops; activations quantized at run time."""
    from onnxruntime import quantization
    with _preprocessed(source) as prepared:
        quantization.quantize_dynamic(str(prepared), str(target), weight_type=quantization.QuantType.QInt8,
                                      op_types_to_quantize=QUANTIZED_OPS, per_channel=True)
    return Path(target)


def quantize_onnx_static(source: str | Path, target: str | Path, calibration: torch.Tensor) -> Path:
    """int8 weights and activations (QDQ), activation ranges calibrated on `calibration` [N, 3, S, S]."""
    from onnxruntime import quantization
    batches = [{INPUT_NAME: row[None].numpy()} for row in calibration.float()]

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with _preprocessed(source) as prepared:
        quantization.quantize_static(str(prepared), str(target), Reader(), quant_format=quantization.QuantFormat.QDQ,
                                     activation_type=quantization.QuantType.QUInt8,
                                     weight_type=quantization.QuantType.QInt8, per_channel=True,
                                     op_types_to_quantize=QUANTIZED_OPS)
    return Path(target)


def compare_tokens(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    """How close two visual-token tensors [B, Nv, D] are: max abs difference and per-token cosine."""
    cosine = torch.nn.functional.cosine_similarity(reference.float(), candidate.float(), dim=-1)  # [B, Nv]
    return {"max_abs_diff": float((reference - candidate).abs().max()), "mean_cosine": float(cosine.mean()),
            "min_cosine": float(cosine.min())}


def export_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, config: OnnxExportConfig | None = None,
                      model: QwenImageModel | None = None) -> dict[str, Any]:
    """Export a checkpoint's image path to `out_dir` (fp32, int8 dynamic, int8 static) and measure each
    against PyTorch; writes and returns `export.json`. `model`: the checkpoint's model, if already loaded."""
    config = config or OnnxExportConfig()
    checkpoint_dir, out = Path(checkpoint_dir), Path(out_dir)
    if quantization_of(checkpoint_dir) is not None:
        raise CheckpointError(f"{checkpoint_dir} is an int8 checkpoint; export the fp32 checkpoint it came from "
                              "(ONNX Runtime makes the int8 versions itself)")
    model = model or load_model(checkpoint_dir)
    vision = model.config.vision
    fp32 = export_vision(model, out / VISION_ONNX, config.opset)
    paths = {"fp32": fp32, "int8-dynamic": quantize_onnx_dynamic(fp32, out / INT8_DYNAMIC_ONNX)}
    if config.calibration_dir is not None:
        calibration = folder_pixels(config.calibration_dir, config.calibration_images, vision, "calibration_dir")
        paths["int8-static"] = quantize_onnx_static(fp32, out / INT8_STATIC_ONNX, calibration)

    held_out = check_pixels(config, vision)
    reference = visual_tokens(model, held_out)
    parity = {}
    for batch in config.parity_batch_sizes:
        pixels = held_out[:batch]
        parity[str(batch)] = compare_tokens(reference[:batch], OrtVisualEncoder(fp32)(pixels))["max_abs_diff"]
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint_dir), "config": to_dict(config),
        "files": {name: path.name for name, path in paths.items()},
        "bytes": {name: path.stat().st_size for name, path in paths.items()},
        "parity_max_abs_diff": parity,
        "vs_pytorch": {name: compare_tokens(reference, OrtVisualEncoder(path)(held_out))
                       for name, path in paths.items()},
    }
    write_json(out / EXPORT_JSON, report)
    return report


def export_summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal: fp32 parity per batch size, and each model's token deltas."""
    parity = ", ".join(f"batch {b}: {d:.1e}" for b, d in report["parity_max_abs_diff"].items())
    lines = [f"ONNX fp32 vs PyTorch max abs diff: {parity}"]
    lines += [f"{name}: max abs diff {tokens['max_abs_diff']:.2e}, mean cosine {tokens['mean_cosine']:.5f}"
              for name, tokens in report["vs_pytorch"].items()]
    if "int8-static" not in report["files"]:
        lines.append("no static int8 model: set export.calibration_dir=DIR (images like the model's inputs)")
    return "\n".join(lines)


@torch.no_grad()
def visual_tokens(model: QwenImageModel, pixels: torch.Tensor) -> torch.Tensor:
    """The PyTorch reference: [N, 3, S, S] -> [N, Nv, Dt]."""
    return VisualTokens(model).eval()(pixels)


def check_pixels(config: OnnxExportConfig, vision: VisionConfig) -> torch.Tensor:
    """[N, 3, S, S] images to compare ONNX with PyTorch on: from `check_dir`, or seeded random pixels."""
    if config.check_images < 1:
        raise InputError(f"check_images must be at least 1, got {config.check_images}")
    if config.check_dir is not None:
        return folder_pixels(config.check_dir, config.check_images, vision, "check_dir")
    generator = torch.Generator().manual_seed(config.seed)
    size = vision.image_size
    return torch.randn(config.check_images, 3, size, size, generator=generator)


def folder_pixels(folder: str | Path, n: int, vision: VisionConfig, what: str) -> torch.Tensor:
    """[<= n, 3, S, S]: the first `n` .png/.jpg images of `folder` (sorted by name), normalised."""
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:n] \
        if folder.is_dir() else []
    if not files:
        raise DataError(f"{what} {folder} holds no .png/.jpg images; point it at a folder of images like those "
                        "the model will see")
    pixels = []
    for path in files:
        with Image.open(path) as image:
            pixels.append(image_to_tensor(image, vision))
    return torch.stack(pixels)


# --- internals -----------------------------------------------------------------------------


@contextlib.contextmanager
def _preprocessed(source: str | Path) -> Iterator[Path]:
    """ORT's recommended pre-processing (shape inference, graph optimisation), into a temporary file."""
    from onnxruntime.quantization import shape_inference
    with tempfile.TemporaryDirectory(prefix="vlstack-onnx-") as tmp:
        target = Path(tmp) / "preprocessed.onnx"
        shape_inference.quant_pre_process(str(source), str(target))
        yield target
