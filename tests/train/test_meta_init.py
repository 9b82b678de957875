"""Meta-device initialisation: `qwen-image-s` (2.6B) built on the meta device, sharded with FSDP2 on 2 gloo
ranks and initialised shard by shard; no rank ever holds the whole model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlstack.models.config import ModelConfig
from vlstack.models.initialize import build_empty, init_weights, materialize
from vlstack.models.vlm import QwenImageModel, count_parameters

WORKER = Path(__file__).with_name("meta_init_worker.py")


@pytest.mark.slow
def test_qwen_image_s_shards_from_the_meta_device_without_ever_being_whole(tmp_path):
    out = tmp_path / "ranks"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(WORKER), "qwen-image-s", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    whole = count_parameters(ModelConfig.from_preset("qwen-image-s"))["total"] * 4  # fp32 bytes, 10.5 GB
    for rank in (0, 1):
        held = json.loads(Path(f"{out}.rank{rank}").read_text())
        assert 0.45 < held["bytes"] / whole < 0.55, held  # half the parameters each
        assert held["peak_rss"] < 0.7 * whole, held  # the whole model was never allocated on this rank
        assert held["probe_rows"] * 2 == ModelConfig.from_preset("qwen-image-s").vision.width * 4
        assert held["probe_std"] == pytest.approx(0.02, rel=0.05)  # drawn, not left empty


def test_an_empty_model_filled_by_init_weights_is_the_whole_model():
    config = ModelConfig.from_preset("nano")
    empty = build_empty(lambda: QwenImageModel(config, seed=3))
    assert all(p.is_meta for p in empty.parameters())
    materialize(empty, torch.device("cpu"))
    init_weights(empty, seed=3)
    whole, other = QwenImageModel(config, seed=3).state_dict(), QwenImageModel(config, seed=4).state_dict()
    filled = empty.state_dict()
    assert all(torch.equal(filled[k], whole[k]) for k in whole)
    assert not torch.equal(whole["vision.prompts"], other["vision.prompts"])  # the seed matters
    lm = empty.language_model
    assert lm.lm_head.weight is lm.model.embed_tokens.weight  # tied weights stay one
    rotary = lm.model.rotary_emb.inv_freq
    assert torch.equal(rotary, QwenImageModel(config).language_model.model.rotary_emb.inv_freq)  # buffers kept
