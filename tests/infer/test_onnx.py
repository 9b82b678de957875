"""ONNX export of the image path: parity with PyTorch on a dynamic batch axis, ORT int8 dynamic and
static models, the Engine on ONNX Runtime, the CLI, and the errors."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from vlstack.checkpoint import load_model
from vlstack.cli import main
from vlstack.data.collate import image_to_tensor
from vlstack.errors import CheckpointError, ConfigError, DataError
from vlstack.infer.engine import Engine, EngineConfig, Request
from vlstack.infer.onnx import (
    INT8_DYNAMIC_ONNX,
    INT8_STATIC_ONNX,
    VISION_ONNX,
    OnnxExportConfig,
    OrtVisualEncoder,
    export_checkpoint,
    export_summary,
    folder_pixels,
    visual_tokens,
)
from vlstack.infer.quantize import quantize_checkpoint
from vlstack.models.config import ModelConfig, VisionConfig
from vlstack.models.tokenizer import special_token_ids
from vlstack.models.vlm import QwenImageModel
from vlstack.synthetic.scenes import shape_scenes


def write_scenes(folder, n, seed):
    folder.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(shape_scenes(n, seed=seed)):
        scene.image.save(folder / f"scene-{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def exported(sharpened_checkpoint, tmp_path_factory):
    """One run of `vlstack export-onnx` (export, ORT int8 dynamic + static calibrated on a folder, parity)."""
    root = tmp_path_factory.mktemp("onnx")
    calibration, check = write_scenes(root / "calibration", 8, seed=1), write_scenes(root / "check", 6, seed=2)
    out = root / "export"
    assert main(["export-onnx", "--model", str(sharpened_checkpoint), "--out", str(out),
                 "--set", f"calibration_dir={calibration}", "--set", f"check_dir={check}"]) == 0
    return out


@pytest.fixture(scope="module")
def pixels():
    return torch.stack([image_to_tensor(s.image, VisionConfig(image_size=32)) for s in shape_scenes(3, seed=7)])


def test_export_writes_three_models_and_a_report(exported):
    assert {VISION_ONNX, INT8_DYNAMIC_ONNX, INT8_STATIC_ONNX, "export.json"} <= {p.name for p in exported.iterdir()}
    report = json.loads((exported / "export.json").read_text())
    assert set(report["parity_max_abs_diff"]) == {"1", "3"}
    assert max(report["parity_max_abs_diff"].values()) <= 1e-4
    assert set(report["vs_pytorch"]) == {"fp32", "int8-dynamic", "int8-static"}


def test_without_calibration_images_there_is_no_static_model(sharpened_checkpoint, tmp_path):
    report = export_checkpoint(sharpened_checkpoint, tmp_path / "out", OnnxExportConfig(check_images=2))
    assert set(report["files"]) == {"fp32", "int8-dynamic"} and max(report["parity_max_abs_diff"].values()) <= 1e-4
    assert "calibration_dir" in export_summary(report)


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_matches_pytorch_on_a_dynamic_batch_axis(exported, sharpened_checkpoint, pixels, batch):
    model = load_model(sharpened_checkpoint)
    encoder = OrtVisualEncoder(exported / VISION_ONNX, model)
    assert isinstance(encoder.session.get_inputs()[0].shape[0], str)  # a symbolic (dynamic) batch axis
    reference, got = visual_tokens(model, pixels[:batch]), encoder(pixels[:batch])
    assert got.shape == reference.shape == (batch, model.num_image_tokens(), model.config.language.hidden_size)
    assert float((got - reference).abs().max()) <= 1e-4


@pytest.mark.parametrize(("filename", "quantized_op"), [(INT8_DYNAMIC_ONNX, "DynamicQuantizeLinear"),
                                                         (INT8_STATIC_ONNX, "QuantizeLinear")])
def test_ort_int8_models_are_quantized_and_stay_close(exported, sharpened_checkpoint, pixels, filename,
                                                     quantized_op):
    ops = {node.op_type for node in onnx.load(str(exported / filename)).graph.node}
    assert quantized_op in ops
    assert (exported / filename).stat().st_size < 0.5 * (exported / VISION_ONNX).stat().st_size
    model = load_model(sharpened_checkpoint)
    reference, got = visual_tokens(model, pixels), OrtVisualEncoder(exported / filename)(pixels)
    cosine = torch.nn.functional.cosine_similarity(reference, got, dim=-1)
    assert cosine.min() > 0.99
    assert 0 < float((got - reference).abs().max()) < 0.05 * float(reference.abs().max())


def test_engine_with_onnx_vision_gives_the_pytorch_greedy_outputs(exported, sharpened_checkpoint):
    model = load_model(sharpened_checkpoint)
    torch_engine = Engine.from_checkpoint(sharpened_checkpoint, EngineConfig(fast_path_max_new_tokens=0))
    onnx_engine = Engine(model, torch_engine.tokenizer, EngineConfig(fast_path_max_new_tokens=0,
                                                                     vision_onnx=str(exported / VISION_ONNX)))
    questions = ["what is on the left?", "how many shapes are there?", "describe it", "is there a circle?"]
    requests = [Request.ask(q, s.image, max_new_tokens=10) for q, s in zip(questions, shape_scenes(4, seed=5))]
    expected = [r.token_ids for r in torch_engine.generate(requests)]
    assert [r.token_ids for r in onnx_engine.generate(requests)] == expected
    assert len({tuple(t) for t in expected}) > 1  # the answers depend on the image
    assert onnx_engine.cache.stats().misses == 4


def test_an_onnx_model_of_another_size_is_refused(exported, tokenizer):
    config = ModelConfig.from_preset("nano")
    config.vision.image_size = 48
    config.image_token_id = special_token_ids(tokenizer).image
    with pytest.raises(ConfigError, match="export it from this checkpoint"):
        Engine(QwenImageModel(config), tokenizer, EngineConfig(vision_onnx=str(exported / VISION_ONNX)))


def test_bad_inputs_are_clear_errors(sharpened_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="vlstack export-onnx"):
        OrtVisualEncoder(tmp_path / "absent.onnx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="calibration_dir"):
        export_checkpoint(sharpened_checkpoint, tmp_path / "x", OnnxExportConfig(calibration_dir=str(tmp_path / "empty")))
    int8 = quantize_checkpoint(sharpened_checkpoint, tmp_path / "int8", "int8-dynamic")
    with pytest.raises(CheckpointError, match="export the fp32 checkpoint"):
        export_checkpoint(int8, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_calibration_images_can_come_from_a_folder(tmp_path):
    write_scenes(tmp_path, 3, seed=9)
    (tmp_path / "notes.txt").write_text("not an image")
    pixels = folder_pixels(tmp_path, 2, VisionConfig(image_size=32), "calibration_dir")
    assert pixels.shape == (2, 3, 32, 32)
