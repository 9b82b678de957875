"""int8 quantization: every Linear quantized, the int8 checkpoint round trip, the Engine on it, the CLI.

The accuracy of a trained model under int8 (within 1 point of fp32 on held-out retrieval)
is in tests/eval/test_deployment.py, which trains one.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from vlstack.checkpoint import QUANTIZATION_NAME, load_model, quantization_of
from vlstack.cli import main
from vlstack.errors import CheckpointError, ConfigError
from vlstack.infer.engine import Engine, EngineConfig, Request
from vlstack.infer.quantize import load_for_inference, quantize_checkpoint, quantize_model, weight_bytes
from vlstack.synthetic.scenes import shape_scenes

METHODS = ["int8-dynamic", "int8-weight-only"]


@pytest.fixture(scope="module")
def requests():
    scenes = shape_scenes(3, seed=4, image_size=32)
    return [Request.ask(q, s.image, max_new_tokens=8)
            for q, s in zip(["what colour is it?", "how many shapes are there?", "describe the picture"], scenes)]


def _inputs():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(512, (3, 12), generator=generator)
    return torch.randn(3, 3, 32, 32, generator=generator), ids, torch.ones_like(ids)


@pytest.mark.parametrize(("method", "kernel"),
                         [("int8-dynamic", "torchao"), ("int8-dynamic", "fbgemm"), ("int8-weight-only", "auto")])
def test_every_linear_is_int8_and_outputs_stay_close(sharpened_checkpoint, method, kernel):
    fp32 = load_model(sharpened_checkpoint)
    int8 = quantize_model(copy.deepcopy(fp32), method, kernel)
    linears = [m for m in int8.modules() if isinstance(m, nn.Linear)]
    if method == "int8-dynamic" and kernel == "fbgemm":
        assert not linears  # all swapped for torch.ao's dynamic int8 Linear
        assert sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in int8.modules()) > 20
    else:
        assert linears and all(m.weight.qdata.dtype == torch.int8 for m in linears)
    with torch.no_grad():
        ref, got = fp32(*_inputs()), int8(*_inputs())
    for name in ("image_embeds", "text_embeds"):
        cosine = torch.nn.functional.cosine_similarity(getattr(ref, name), getattr(got, name), dim=-1)
        assert cosine.min() > 0.97, name  # sharpened LM weights: large activations, the hardest case
        assert not torch.equal(getattr(ref, name), getattr(got, name))  # the weights really changed
    assert weight_bytes(int8) < 0.6 * weight_bytes(fp32)


@pytest.mark.parametrize("method", METHODS)
def test_int8_checkpoint_round_trip_is_exact_and_small(sharpened_checkpoint, tmp_path, method):
    out = quantize_checkpoint(sharpened_checkpoint, tmp_path / "int8", method)
    assert quantization_of(out).method == method and quantization_of(sharpened_checkpoint) is None
    assert {"config.yaml", "model.safetensors", QUANTIZATION_NAME, "tokenizer"} <= {p.name for p in out.iterdir()}
    with safe_open(str(out / "model.safetensors"), "pt") as file:
        names = file.keys()
        qkv = [k for k in names if k.startswith("vision.blocks.0.attn") and "qkv" in k]
        assert any(file.get_tensor(k).dtype == torch.int8 for k in qkv)
    assert (out / "model.safetensors").stat().st_size < 0.6 * (sharpened_checkpoint / "model.safetensors").stat().st_size
    loaded = load_for_inference(out)  # the int8 checkpoint on the kernel quantize_model picks
    in_memory = quantize_model(load_model(sharpened_checkpoint), method)
    with torch.no_grad():
        a, b = loaded(*_inputs()), in_memory(*_inputs())
    assert torch.equal(a.image_embeds, b.image_embeds) and torch.equal(a.mlm_logits, b.mlm_logits)


def test_engine_loads_an_int8_checkpoint(sharpened_checkpoint, tmp_path, requests):
    out = quantize_checkpoint(sharpened_checkpoint, tmp_path / "int8", "int8-dynamic")
    engine = Engine.from_checkpoint(out, EngineConfig(fast_path_max_new_tokens=0))
    reference = Engine(quantize_model(load_model(sharpened_checkpoint), "int8-dynamic"),
                       engine.tokenizer, EngineConfig(fast_path_max_new_tokens=0))
    got = [r.token_ids for r in engine.generate(requests)]
    assert got == [r.token_ids for r in reference.generate(requests)]
    assert all(got) and len({tuple(t) for t in got}) > 1  # real, input-dependent answers
    bf16 = Engine(engine.model, engine.tokenizer, EngineConfig(precision="bf16", fast_path_max_new_tokens=0))
    assert all(r.token_ids for r in bf16.generate(requests))  # int8 layers take autocast's bf16 inputs


def test_bad_method_and_bad_files_are_clear_errors(sharpened_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="int8-dynamic, int8-weight-only"):
        quantize_checkpoint(sharpened_checkpoint, tmp_path / "x", "int4")
    assert not (tmp_path / "x").exists()
    out = quantize_checkpoint(sharpened_checkpoint, tmp_path / "int8", "int8-weight-only")
    (out / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="vlstack quantize"):
        load_model(out)
    with pytest.raises(ConfigError, match="already an int8 checkpoint"):
        quantize_checkpoint(out, tmp_path / "twice", "int8-dynamic")


def test_cli_quantize_writes_the_checkpoint_and_the_report(sharpened_checkpoint, tmp_path, capsys):
    out = tmp_path / "int8"
    assert main(["quantize", "--model", str(sharpened_checkpoint), "--method", "int8-dynamic", "--out", str(out),
                 "--set", "speed_repeats=1", "--set", "speed_batch=2", "--set", "speed_tokens=8"]) == 0
    report = json.loads((out / "quantize.json").read_text())
    assert report["weight_bytes"]["int8"] < report["weight_bytes"]["fp32"]
    assert report["speed_seconds"]["speedup"]["image_path"] > 0
    assert quantization_of(out).method == "int8-dynamic"
    printed = capsys.readouterr().out
    assert "speed-up over fp32" in printed and "vlstack eval" in printed
    assert main(["quantize", "--model", str(sharpened_checkpoint), "--method", "fp8", "--out", str(tmp_path / "y")]) == 2
