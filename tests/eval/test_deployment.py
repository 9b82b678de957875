"""Deployment variants measured against fp32: a trained model keeps its held-out retrieval under int8."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from vlstack.checkpoint import load_model
from vlstack.config import load_config
from vlstack.data.loader import pairs_to_tensors
from vlstack.eval.deployment import DeploymentEvalConfig, compare_quantized
from vlstack.infer.quantize import QuantizeConfig, quantize_model
from vlstack.models.tokenizer import load_tokenizer
from vlstack.synthetic.scenes import shape_scenes, split_seed
from vlstack.train.pretrain import PretrainConfig, run_pretraining

NANO = str(Path(__file__).resolve().parents[2] / "configs" / "nano.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pretrain_data):
    """The nano recipe trained a little longer (fp32, 200 steps of 32): held-out retrieval above chance.
    lr 1e-3: at 2e-3 R@5 on 500 held-out pairs swung between 0.04 and 0.14 over seeds since the tokenizer
    also learns the instruction data's words; at 1e-3 it was 0.31 and 0.50. The tests score 1,000 held-out
    pairs: on 500, fbgemm's per-tensor int8 moved R@1 by 1.2 points (6 pairs) on this model."""
    out = tmp_path_factory.mktemp("pretrain")
    run_pretraining(load_config(PretrainConfig, NANO, [
        f"out_dir={out}", "train.steps=200", "train.batch_size=32", "train.lr=0.001", "train.precision=fp32",
        *pretrain_data(1000, 16), "train.tensorboard=false", "train.measure_mfu=false"]))
    return out / "checkpoint"


@pytest.mark.slow
@pytest.mark.parametrize(("method", "kernel", "points"), [
    # fbgemm quantizes activations per tensor, and to 7 bits on a CPU without VNNI (torch.ao's default):
    # there R@5 moved up to 2 points (RESULTS.md); the per-token kernels stay within one
    ("int8-dynamic", "fbgemm", 2.5), ("int8-dynamic", "torchao", 1.0), ("int8-weight-only", "auto", 1.0)])
def test_int8_keeps_held_out_retrieval_of_a_trained_model(trained, tmp_path, method, kernel, points):
    fp32, tokenizer = load_model(trained), load_tokenizer(trained / "tokenizer")
    scenes = shape_scenes(1000, seed=split_seed(0, "test"))
    captions = [s.caption for s in scenes]
    pairs = pairs_to_tensors([s.image for s in scenes], captions, tokenizer, fp32.config.vision, 32), captions
    config = DeploymentEvalConfig(quantize=QuantizeConfig(speed_repeats=1))
    report = compare_quantized(fp32, quantize_model(copy.deepcopy(fp32), method, kernel), tokenizer, config, tmp_path,
                               pairs=pairs)
    retrieval = report["retrieval"]
    assert retrieval["fp32"]["r@5"] > 2 * retrieval["fp32"]["chance@5"]  # it learned: far above chance
    assert all(abs(delta) <= points for delta in retrieval["delta_points"].values()), retrieval
