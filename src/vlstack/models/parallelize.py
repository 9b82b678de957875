"""How a model is parallelised: FSDP2 sharding, activation checkpointing and torch.compile, applied to
the repeated blocks the model declares (`transformer_blocks()`), as torchtitan keeps `parallelize.py`
beside each model. Generic training code asks the model; it never names the model's attributes.

A trainable model declares `transformer_blocks() -> list[nn.Module]` (QwenImageModel, and the wrappers
that hold one: the reward model, PPO's policy with its value head); a model that declares none is
trained whole (one FSDP2 unit, no checkpointing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers import PreTrainedModel


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks `model` declares, or none."""
    declare = getattr(model, "transformer_blocks", None)
    return list(declare()) if callable(declare) else []


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of storing them (a block wrapped
    already, by an earlier Trainer of the same model, stays as it is)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing as wrap

    targets = {id(block) for block in transformer_blocks(model) if not isinstance(block, CheckpointWrapper)}
    wrap(model, check_fn=lambda module: id(module) in targets)
    # a recomputed decoder layer would append its keys and values to the KV cache a second time
    # (a shape error on padded batches); training needs no cache, generate() asks for one itself
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            module.config.use_cache = False


def compile_blocks(model: nn.Module) -> None:
    """torch.compile each block in place (the loop around them stays eager)."""
    for block in transformer_blocks(model):
        block.compile()


def fully_shard_blocks(root: nn.Module, model: nn.Module, bf16: bool, cpu_offload: bool) -> nn.Module:
    """FSDP2 (ZeRO-3): each of `model`'s blocks one sharded unit, then `root` (which holds `model`) for the
    remaining parameters; bf16 compute with fp32 gradient reduction when `bf16`."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mixed = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    for block in transformer_blocks(model):
        fully_shard(block, mp_policy=mixed, offload_policy=offload)
    fully_shard(root, mp_policy=mixed, offload_policy=offload)
    return root


@contextlib.contextmanager
def whole_weights(module: nn.Module) -> Iterator[None]:
    """Every FSDP2 unit in `module` (the Trainer's root) gathered once, on every rank together, and kept whole
    until the end: forwards a rank decides alone (generating its own prompts' answers, of lengths only it
    knows) must not all-gather. Without FSDP2 it does nothing."""
    from torch.distributed.fsdp import FSDPModule

    units = [unit for unit in module.modules() if isinstance(unit, FSDPModule)]
    if not units:
        yield
        return
    # FSDP2 takes the first unit to run forward for the root; name it before a block runs alone
    module._get_fsdp_state()._lazy_init()
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True)
