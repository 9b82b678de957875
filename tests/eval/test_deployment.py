"""Deployment variants measured against fp32: a trained model keeps its accuracy under int8, and the
demo's figures come out whole."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from vlstack.config import load_config
from vlstack.eval.deployment import DeploymentEvalConfig, compare_quantized, deployment_figures
from vlstack.infer.quantize import load_model, quantize_model
from vlstack.models.config import ModelConfig
from vlstack.models.tokenizer import load_tokenizer, special_token_ids
from vlstack.models.vlm import QwenImageModel
from vlstack.train.pretrain import PretrainConfig, run_pretraining

NANO = str(Path(__file__).resolve().parents[2] / "configs" / "nano.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The nano recipe trained a little longer (fp32, 200 steps of 32): held-out retrieval above chance.
    lr 1e-3: at 2e-3 R@5 on 500 held-out pairs swung between 0.04 and 0.14 over seeds since the tokenizer
    also learns the instruction data's words; at 1e-3 it was 0.31 and 0.50. The tests score 1,000 held-out
    pairs: on 500, fbgemm's per-tensor int8 moved R@1 by 1.2 points (6 pairs) on this model."""
    out = tmp_path_factory.mktemp("pretrain")
    run_pretraining(load_config(PretrainConfig, NANO, [
        f"out_dir={out}", "train.steps=200", "train.batch_size=32", "train.lr=0.001", "train.precision=fp32",
        "data.train_samples=1000", "data.test_samples=16", "train.tensorboard=false", "train.measure_mfu=false"]))
    return out / "checkpoint"


@pytest.mark.slow
@pytest.mark.parametrize(("method", "kernel"),
                         [("int8-dynamic", "fbgemm"), ("int8-dynamic", "torchao"), ("int8-weight-only", "auto")])
def test_int8_keeps_held_out_retrieval_of_a_trained_model_within_one_point(trained, tmp_path, method, kernel):
    fp32 = load_model(trained)
    config = DeploymentEvalConfig(heldout_pairs=1000, benchmarks=[], speed_repeats=1)
    report = compare_quantized(fp32, quantize_model(copy.deepcopy(fp32), method, kernel),
                               load_tokenizer(trained / "tokenizer"), config, tmp_path)
    retrieval = report["retrieval"]
    assert retrieval["fp32"]["r@5"] > 2 * retrieval["fp32"]["chance@5"]  # it learned: far above chance
    assert all(abs(delta) <= 1.0 for delta in retrieval["delta_points"].values()), retrieval


@pytest.mark.slow
def test_deployment_figures_for_the_demo(tmp_path, tokenizer):
    config = ModelConfig.from_preset("nano")
    config.image_token_id = special_token_ids(tokenizer).image
    torch.manual_seed(0)
    QwenImageModel(config).save_pretrained(tmp_path / "ckpt", tokenizer)
    figures = deployment_figures(tmp_path / "ckpt", tmp_path / "deploy", quick=True)["figures"]
    assert set(figures["int8_dynamic"]["retrieval_delta_points"]) == {"r@1", "r@5", "itm_accuracy"}
    assert figures["int8_dynamic"]["weight_bytes"]["int8"] < figures["int8_dynamic"]["weight_bytes"]["fp32"]
    assert figures["onnx"]["parity_max_abs_diff"] <= 1e-4
    assert set(figures["onnx"]["identical_answers"]) == {"onnx-fp32", "onnx-int8-dynamic", "onnx-int8-static"}
    cache = figures["feature_cache"]
    assert cache["hit_rate"] == 0.5 and cache["warm_ms"] < cache["cold_ms"]
    assert (tmp_path / "deploy" / "deployment_report.json").is_file()
