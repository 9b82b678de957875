"""The demo's deployment stage: every figure comes out whole."""

import pytest
import torch

from vlstack.checkpoint import save_model
from vlstack.demo.deployment import deployment_figures
from vlstack.demo.recipes import DemoConfig
from vlstack.models.config import ModelConfig
from vlstack.models.tokenizer import special_token_ids
from vlstack.models.vlm import QwenImageModel


@pytest.mark.slow
def test_deployment_figures_for_the_demo(tmp_path, tokenizer):
    config = ModelConfig.from_preset("nano")
    config.image_token_id = special_token_ids(tokenizer).image
    torch.manual_seed(0)
    save_model(QwenImageModel(config), tmp_path / "ckpt", tokenizer)
    figures = deployment_figures(tmp_path / "ckpt", tmp_path / "deploy", DemoConfig.quick().deployment)["figures"]
    assert set(figures["int8_dynamic"]["retrieval_delta_points"]) == {"r@1", "r@5", "itm_accuracy"}
    assert figures["int8_dynamic"]["weight_bytes"]["int8"] < figures["int8_dynamic"]["weight_bytes"]["fp32"]
    assert figures["onnx"]["parity_max_abs_diff"] <= 1e-4
    assert set(figures["onnx"]["identical_answers"]) == {"onnx-fp32", "onnx-int8-dynamic", "onnx-int8-static"}
    cache = figures["feature_cache"]
    assert cache["hit_rate"] == 0.5 and cache["warm_ms"] < cache["cold_ms"]
    assert (tmp_path / "deploy" / "deployment_report.json").is_file()
