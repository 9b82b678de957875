"""Model weights on disk: safetensors only (never pickle), written atomically.

A checkpoint is a directory (`config.yaml`, `model.safetensors`, `tokenizer/`);
`vlstack.models.vlm` knows which files go in it, this module knows how to write
and verify them. Weights over `max_shard_size` are split into
`model-0000i-of-0000n.safetensors` shards with a `model.safetensors.index.json`,
the layout `transformers` uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from huggingface_hub import save_torch_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from vlstack.errors import CheckpointError

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.yaml"
TOKENIZER_DIR = "tokenizer"


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `target` only if the block succeeds.

    A run killed mid-save leaves the previous checkpoint intact, never half a new one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_weights(state_dict: dict[str, torch.Tensor], directory: str | Path, max_shard_size: int | str = "5GB") -> None:
    """Write a model's state dict into `directory` (tensors that share storage are stored once).

    A tensor that views part of a larger buffer (as a gathered FSDP2 state dict can hold) is
    copied out first: safetensors stores whole storages only. Tied weights stay shared.
    """
    whole = {name: tensor if _owns_storage(tensor) else tensor.clone() for name, tensor in state_dict.items()}
    save_torch_state_dict(whole, directory, max_shard_size=max_shard_size)


def _owns_storage(tensor: torch.Tensor) -> bool:
    return tensor.is_contiguous() and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


def load_weights(model: nn.Module, directory: str | Path) -> None:
    """Load weights into `model`, failing with the names of missing, unexpected or misshapen keys."""
    directory = Path(directory)
    state = read_weights(directory)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not _is_tied_alias(model, k, state)]
    unexpected = [k for k in state if k not in expected]
    misshapen = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or misshapen:
        raise CheckpointError(
            f"the weights in {directory} do not fit this architecture; it was saved from a different config.\n"
            + _listing("mismatched shapes", misshapen)
            + _listing("missing keys", missing)
            + _listing("unexpected keys", unexpected)
            + "Build the model from the checkpoint's own config.yaml (from_pretrained does this)."
        )
    model.load_state_dict(state, strict=False)


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, from one file or from the shards its index lists."""
    index = directory / INDEX_NAME
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    elif (directory / WEIGHTS_NAME).is_file():
        files = [WEIGHTS_NAME]
    else:
        raise CheckpointError(f"no weights in {directory}; a checkpoint directory holds {WEIGHTS_NAME} or {INDEX_NAME}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        path = directory / name
        try:
            state.update(load_file(str(path)))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); re-export the checkpoint") from exc
    return state


def _is_tied_alias(model: nn.Module, key: str, state: dict) -> bool:
    """True when `key` shares storage with a tensor that the file does hold (tied weights)."""
    tensors = model.state_dict(keep_vars=True)
    ptr = tensors[key].data_ptr()
    return any(k in state and t.data_ptr() == ptr for k, t in tensors.items() if k != key)


def _listing(title: str, items: list[str], limit: int = 10) -> str:
    if not items:
        return ""
    shown = "\n".join(f"  {item}" for item in items[:limit])
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{title} ({len(items)}):\n{shown}{more}\n"
