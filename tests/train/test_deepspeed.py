"""parallel.mode=deepspeed: the DeepSpeed config against train.*, and two-process ZeRO-3 runs on CPU (gloo)."""

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from vlstack.checkpoint import load_model
from vlstack.config import load_config
from vlstack.errors import CheckpointError, ConfigError, VlstackError
from vlstack.models.config import ModelConfig
from vlstack.models.parallelize import apply_activation_checkpointing
from vlstack.models.vlm import QwenImageModel
from vlstack.train.backends import deepspeed as deepspeed_engine
from vlstack.train.backends.deepspeed import (
    deepspeed_settings,
    load_deepspeed_config,
    load_state,
    resolve_offload,
)
from vlstack.train.config import ParallelConfig
from vlstack.train.objectives import itc_objective
from vlstack.train.pretrain import PretrainConfig
from vlstack.train.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[2]
ARTICLE_CONFIG = ROOT / "configs" / "deepspeed_zero3.yaml"
WORKER = Path(__file__).with_name("deepspeed_worker.py")


def _seed_recipe(*overrides: str) -> TrainConfig:
    """The qwen-image-s recipe switched to DeepSpeed with the article's config, trained in fp16 as the article does."""
    sets = ["train.parallel.mode=deepspeed", f"train.parallel.deepspeed_config={ARTICLE_CONFIG}",
            "train.precision=fp16", *overrides]
    return load_config(PretrainConfig, ROOT / "configs" / "qwen-image-s.yaml", sets).train


def test_the_shipped_config_is_the_seeds():
    ds = load_deepspeed_config(ARTICLE_CONFIG)
    assert ds["train_batch_size"] == 4096 and ds["gradient_accumulation_steps"] == 2
    assert ds["fp16"]["enabled"] and 2 ** ds["fp16"]["initial_scale_power"] == 1024 and not ds["bf16"]["enabled"]
    assert ds["optimizer"] == {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.98], "weight_decay": 0.01}}
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "nvme"
    assert zero["allgather_bucket_size"] == zero["reduce_bucket_size"] == 5e8
    assert ds["activation_checkpointing"]["partition_activations"]


def test_train_settings_fill_the_deepspeed_config():
    settings = deepspeed_settings(_seed_recipe(), world=8)
    assert settings["train_micro_batch_size_per_gpu"] == 4096 // (8 * 2)
    assert settings["gradient_clipping"] == 1.0 and settings["fp16"]["loss_scale"] == 0
    # no file: plain ZeRO-3 from train.* alone
    plain = deepspeed_settings(TrainConfig(batch_size=32, grad_accum_steps=2, lr=3e-4, precision="bf16",
                                           parallel=ParallelConfig(mode="deepspeed")), world=2)
    assert plain == {
        "train_batch_size": 32, "gradient_accumulation_steps": 2, "train_micro_batch_size_per_gpu": 8,
        "gradient_clipping": 1.0, "fp16": {"enabled": False}, "bf16": {"enabled": True},
        "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.98], "weight_decay": 0.01}},
        "zero_optimization": {"stage": 3},
    }


def test_the_seeds_wrapped_form_and_yaml_strings_are_read(tmp_path):
    path = tmp_path / "seed.yaml"
    path.write_text("deepspeed_config:\n  train_batch_size: 64\n  optimizer:\n    type: AdamW\n"
                    "    params:\n      lr: 1e-4\n")  # YAML 1.1 reads 1e-4 as a string
    settings = deepspeed_settings(TrainConfig(batch_size=64, parallel=ParallelConfig(
        mode="deepspeed", deepspeed_config=str(path))), world=1)
    assert settings["optimizer"]["params"]["lr"] == 1e-4
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json is not valid JSON"):
        load_deepspeed_config(tmp_path / "bad.json")


@pytest.mark.parametrize("overrides, keys", [
    (["train.lr=0.001"], ["optimizer.params.lr=0.0001", "train.lr=0.001"]),
    (["train.batch_size=1024"], ["train_batch_size=4096", "train.batch_size=1024"]),
    (["train.grad_accum_steps=4"], ["gradient_accumulation_steps=2", "train.grad_accum_steps=4"]),
    (["train.precision=bf16"], ["fp16.enabled=True", "train.precision='bf16'"]),
    (["train.grad_clip=0.5"], ["gradient_clipping=1.0", "train.grad_clip=0.5"]),
    (["train.betas=[0.9, 0.999]"], ["optimizer.params.betas=[0.9, 0.98]", "train.betas=(0.9, 0.999)"]),
    (["train.fp16_init_scale=4096"], ["fp16.initial_scale_power=10", "train.fp16_init_scale=4096"]),
    (["train.activation_checkpointing=false"], ["activation_checkpointing section", "train.activation_checkpointing"]),
    (["train.parallel.nvme_path=/a"], ["zero_optimization.offload_optimizer.nvme_path='/b'",
                                       "train.parallel.nvme_path='/a'"]),
])
def test_a_conflict_names_both_keys(overrides, keys, tmp_path):
    ds = load_deepspeed_config(ARTICLE_CONFIG)
    ds["zero_optimization"]["offload_optimizer"]["nvme_path"] = "/b"
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    with pytest.raises(ConfigError) as error:
        deepspeed_settings(_seed_recipe(f"train.parallel.deepspeed_config={path}", *overrides), world=8)
    for key in keys:
        assert key in str(error.value)


def test_settings_vlstack_owns_are_refused(tmp_path):
    for extra, message in [({"scheduler": {"type": "WarmupLR"}}, "scheduler section conflicts with train.warmup"),
                           ({"optimizer": {"type": "Lion"}}, "optimizer.type='Lion'")]:
        path = tmp_path / "ds.json"
        path.write_text(json.dumps(extra))
        config = TrainConfig(parallel=ParallelConfig(mode="deepspeed", deepspeed_config=str(path)))
        with pytest.raises(ConfigError, match=message):
            deepspeed_settings(config, world=1)
    with pytest.raises(ConfigError, match="not a power of two"):
        deepspeed_settings(TrainConfig(precision="fp16", fp16_init_scale=1000.0), world=1)


def test_nvme_offload_falls_back_to_cpu_with_a_warning(tmp_path, monkeypatch, caplog):
    def offload(path=None):
        return {"zero_optimization": {"offload_optimizer": {"device": "nvme", "nvme_path": path}}}

    caplog.set_level(logging.WARNING, logger=deepspeed_engine.__name__)
    for ds, available, reason in [(offload(), True, "no directory is set"),
                                  (offload(str(tmp_path / "absent")), True, "is not a directory"),
                                  (offload(str(tmp_path)), False, "libaio-dev")]:
        monkeypatch.setattr(deepspeed_engine, "_async_io_available", lambda available=available: available)
        resolve_offload(ds)
        assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
        assert reason in caplog.text and "offloading to CPU memory instead" in caplog.text
    monkeypatch.setattr(deepspeed_engine, "_async_io_available", lambda: True)
    kept = offload(str(tmp_path))
    resolve_offload(kept)
    assert kept["zero_optimization"]["offload_optimizer"]["device"] == "nvme"


def test_missing_deepspeed_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` raises ImportError
    config = TrainConfig(steps=1, batch_size=2, parallel=ParallelConfig(mode="deepspeed"))
    data = {"input_ids": torch.zeros(4, 1), "attention_mask": torch.ones(4, 1)}
    with pytest.raises(VlstackError, match=r"pip install 'vlstack\[deepspeed\]'"):
        Trainer(nn.Linear(2, 1), lambda model, batch: (torch.zeros(()), {}), config, data)


def test_activation_checkpointing_as_the_seed_config_requires():
    """Recomputed blocks give the same loss and gradients, on a padded batch too (the KV cache
    of the language model must not grow during recomputation)."""
    generator = torch.Generator().manual_seed(0)
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[:, 8:] = 0
    batch = {"pixel_values": torch.randn(4, 3, 32, 32, generator=generator),
             "input_ids": torch.randint(10, 500, (4, 12), generator=generator), "attention_mask": mask}
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = QwenImageModel(ModelConfig.from_preset("nano"))
        if checkpointed:
            apply_activation_checkpointing(model)
        loss, _ = itc_objective(model, batch)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_a_precision_the_accelerator_lacks_is_a_config_error(monkeypatch):
    from deepspeed.accelerator import get_accelerator

    monkeypatch.setattr(type(get_accelerator()), "is_fp16_supported", lambda self: False)  # as on CPUs
    config = TrainConfig(batch_size=2, precision="fp16", parallel=ParallelConfig(mode="deepspeed"))
    with pytest.raises(ConfigError, match="train.precision=fp16 is not supported by DeepSpeed"):
        deepspeed_engine.build_engine(nn.Linear(2, 1), [], config, world=1, scheduler=lambda optimizer: None)


def test_zero3_shards_resume_only_on_the_same_number_of_ranks(tmp_path):
    with pytest.raises(CheckpointError, match="written by 2 DeepSpeed rank.*--nproc_per_node=2"):
        load_state(None, tmp_path, saved_world=2, world=1)


def _run(phase: str, out: Path, nproc: int) -> dict:
    command = [sys.executable, str(WORKER), phase, str(out)]
    if nproc > 1:
        command[1:1] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / f"{phase}.json").read_text())


def _losses(result: dict) -> list[float]:
    return [r["loss"] for r in result["records"] if not r["skipped"]]


@pytest.mark.slow
def test_zero3_follows_the_single_process_curve_exports_and_resumes(tmp_path):
    """ITC on the nano model, fp32, 2 ranks x 2 accumulation steps, ZeRO-3 without offload."""
    single = _run("single", tmp_path, 1)
    zero3 = _run("deepspeed", tmp_path, 2)
    # same global batch, ITC negatives gathered over ranks: the same curve up to float reordering
    assert _losses(zero3) == pytest.approx(_losses(single), rel=1e-5)
    skipped = [r["step"] for r in single["records"] if r["skipped"]]
    assert skipped and [r["step"] for r in zero3["records"] if r["skipped"]] == skipped  # the NaN row, alike
    assert zero3["final_step"] == single["final_step"] == 6
    losses = _losses(zero3)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    # model.safetensors holds exactly the weights gathered from the engine's shards
    assert zero3["names_equal"] and zero3["weights_equal"] and zero3["outputs_equal"]

    interrupted = _run("interrupted", tmp_path, 2)
    assert interrupted["final_step"] == 3  # SIGTERM: the step finished, a checkpoint written, stopped
    resumed = _run("resumed", tmp_path, 2)
    after = [r for r in zero3["records"] if r["step"] > 3]
    assert resumed["records"] == after  # bit-equal, the skipped step included
    load_model(tmp_path / "stopped" / "checkpoint")


@pytest.mark.slow
def test_pretrain_cli_under_deepspeed(tmp_path, pretrain_data):
    """The README command: the mixed ITC + ITM + MLM + VTM loss in bf16 on 2 ranks, with activation
    checkpointing (which the article's DeepSpeed config asks for)."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "vlstack.cli", "pretrain", "--config", str(ROOT / "configs" / "nano.yaml"),
               "--set", "train.parallel.mode=deepspeed", "--set", "train.activation_checkpointing=true",
               "--set", "train.steps=8", "--set", "train.log_every=1", "--set", f"out_dir={out}",
               *[arg for o in pretrain_data() for arg in ("--set", o)]]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((out / "pretrain.json").read_text())
    losses = [r["loss"] for r in results["history"] if "loss" in r]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert {"itc", "itm", "mlm", "vtm"} <= set(results["history"][-1])
    assert {"r@1", "itm_accuracy"} <= set(results["after_training"])
    checkpoint = out / "checkpoint"
    assert {"config.yaml", "model.safetensors", "tokenizer", "deepspeed", "trainer_state.json"} <= {
        p.name for p in checkpoint.iterdir()}
    load_model(checkpoint)
