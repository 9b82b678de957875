"""Initial weights that do not depend on how the model is laid out, and models built without any.

`init_weights` draws every parameter in blocks of rows, each block from its own generator seeded by
(seed, the parameter's name, the block's index). A model initialised whole on one process and one
built by `build_empty`, sharded with FSDP2 and initialised shard by shard on any number of ranks
therefore hold the same numbers, and a rank draws only the rows it holds (plus the rest of a block at
each end of its shard): torchtitan's order (build on the meta device, shard, then initialise), with
draws that do not change with the number of ranks.

The rules: vlstack's own layers are ViT-style (truncated normal, std 0.02, for matrices; zero biases;
unit norms); a `transformers` model inside keeps the rules of `PreTrainedModel._init_weights` (normal
with its config's `initializer_range`, unit norms, zero biases).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn
from transformers import PreTrainedModel

from vlstack.errors import ConfigError
from vlstack.models.heads import ITCHead
from vlstack.models.vision import PositionTable

BLOCK_ELEMENTS = 1 << 20
"""About this many numbers are drawn from one generator (whole rows of the parameter)."""
VLSTACK_STD = 0.02

M = TypeVar("M", bound=nn.Module)
Draw = Callable[[torch.Generator, tuple[int, ...]], torch.Tensor]


def build_empty(build: Callable[[], M]) -> M:
    """`build()` with its parameters on the meta device (no memory, no initialisation) and its buffers (rotary
    frequencies) computed as usual, since nothing else knows their values; `transformers` models inside tie
    their weights again (the meta parameters were made one by one)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = build()
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            module.tie_weights()
    return model


def is_empty(model: nn.Module) -> bool:
    """True for a model built by `build_empty` that has no storage yet."""
    return any(p.is_meta for p in model.parameters())


def materialize(model: nn.Module, device: torch.device) -> None:
    """Give a model built by `build_empty` (sharded or not) uninitialised storage on `device`; its
    buffers keep their values and tied parameters stay one (`to_empty` gives each module its own copy)."""
    buffers = dict(model.named_buffers())
    places: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None:
                places.setdefault(id(param), []).append((module, name))
    model.to_empty(device=device)
    for (owner, name), *others in places.values():
        for module, other in others:
            setattr(module, other, getattr(owner, name))
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])


@torch.no_grad()
def init_weights(model: nn.Module, seed: int, skip: tuple[str, ...] = ()) -> None:
    """Draw every parameter of `model` (whole, or this rank's FSDP2 shard of it) but those whose names start
    with one of `skip` (parts loaded from a pretrained checkpoint)."""
    lm_std = {name: model_std(module) for name, module in model.named_modules() if isinstance(module, PreTrainedModel)}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        inside_lm = next((std for prefix, std in lm_std.items() if _within(module_name, prefix)), None)
        for name, param in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{name}" if module_name else name
            if id(param) in seen or full_name.startswith(skip):
                continue
            seen.add(id(param))
            rule = _hf_rule(module, name, inside_lm) if inside_lm is not None else _vlstack_rule(module, name)
            if rule is None:
                raise ConfigError(f"no initial-value rule for {full_name} ({type(module).__name__}.{name}); add one "
                                  "to vlstack.models.initialize")
            _draw(param, rule, seed, full_name)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None and inside_lm is not None:
                _zero_row(param, module.padding_idx)


def model_std(model: PreTrainedModel) -> float:
    """The std `transformers` initialises this model's matrices with."""
    return getattr(model.config, "initializer_range", None) or VLSTACK_STD


def local_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """This rank's rows of `tensor` and the index of the first: the whole tensor, or its FSDP2 shard (dim 0
    split as `torch.chunk` splits it)."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(tensor, DTensor):
        return tensor, 0
    if tensor.device_mesh.ndim != 1 or tensor.placements != (Shard(0),):
        raise ConfigError(f"a tensor placed as {tensor.placements} on a {tensor.device_mesh.ndim}-D mesh: only FSDP2's "
                          "row sharding (Shard(0) on one mesh dimension) is supported")
    rows, world = tensor.shape[0], tensor.device_mesh.size()
    chunk = -(-rows // world)
    start = min(tensor.device_mesh.get_local_rank() * chunk, rows)
    local = tensor.to_local()
    if local.shape[0] != min(chunk, rows - start):
        raise ConfigError(f"unexpected shard of {tuple(tensor.shape)}: {tuple(local.shape)} rows from {start}")
    return local, start


def _draw(param: torch.Tensor, rule: Draw, seed: int, name: str) -> None:
    """Write this rank's rows of `param` (whole or sharded) in blocks of about `BLOCK_ELEMENTS` numbers, each
    block of rows drawn from its own generator, so a rank draws only the blocks its rows fall in."""
    local, start = local_rows(param)
    total = param.shape[0] if param.ndim else 1
    end = start + (local.shape[0] if local.ndim else 1)
    per_block = max(1, BLOCK_ELEMENTS // max(1, math.prod(param.shape[1:])))
    for block in range(start // per_block, -(-end // per_block)):
        first = block * per_block
        rows = rule(_generator(seed, name, block), (min(per_block, total - first), *param.shape[1:]))
        lo, hi = max(start, first), min(end, first + rows.shape[0])
        if local.ndim:
            local[lo - start : hi - start].copy_(rows[lo - first : hi - first])
        else:
            local.copy_(rows.reshape(()))


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(f"{prefix}.") or prefix == ""


def _generator(seed: int, name: str, block: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{name}/{block}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _normal(std: float) -> Draw:
    return lambda g, shape: torch.empty(shape).normal_(0.0, std, generator=g)


def _truncated_normal(std: float, bound: float = 2.0) -> Draw:
    """`nn.init.trunc_normal_`'s default: a normal cut at +-2 (absolute). For a std far below the bound the cut
    never happens, and a plain normal (5x faster to draw) is the same distribution."""
    if std * 10 < bound:
        return _normal(std)
    return lambda g, shape: nn.init.trunc_normal_(torch.empty(shape), std=std, a=-bound, b=bound, generator=g)


def _constant(value: float) -> Draw:
    return lambda g, shape: torch.full(shape, value)


def _hf_rule(module: nn.Module, name: str, std: float) -> Draw | None:
    """`transformers`' `PreTrainedModel._init_weights`, for the parameter kinds its causal LMs have."""
    if name == "bias":
        return _constant(0.0)
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)):
        return _normal(std)
    if "Norm" in type(module).__name__ and name == "weight":
        return _constant(1.0)
    return None


def _vlstack_rule(module: nn.Module, name: str) -> Draw | None:
    """vlstack's layers: the kinds of layer (a module's `init_std` attribute overrides the std), then the
    parameters some modules hold of their own."""
    if name == "bias":
        return _constant(0.0)
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        return _truncated_normal(getattr(module, "init_std", VLSTACK_STD))  # a layer may name its own std
    if isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        return _constant(1.0)
    if isinstance(module, nn.Embedding):
        return _normal(1.0)  # PyTorch's own init of an embedding (the fusion encoder's modality vectors)
    if isinstance(module, PositionTable) and name == "table":
        return _truncated_normal(module.init_std)
    if isinstance(module, ITCHead) and name == "logit_scale":
        return _constant(math.log(1.0 / module.temperature_init))
    if name == "prompts":
        return _truncated_normal(VLSTACK_STD)
    if name == "mask_embedding":
        return _constant(0.0)
    return None


def _zero_row(param: torch.Tensor, row: int) -> None:
    local, start = local_rows(param)
    if start <= row < start + local.shape[0]:
        local[row - start].zero_()
