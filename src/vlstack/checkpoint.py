"""Model weights on disk: safetensors only (never pickle), written atomically.

A checkpoint is a directory (`config.yaml`, `model.safetensors`, `tokenizer/`);
`vlstack.models.vlm` knows which files go in it, this module knows how to write
and verify them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from torch import nn

from vlstack.errors import CheckpointError

WEIGHTS_NAME = "model.safetensors"
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


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write the model's parameters and buffers (tied tensors stored once)."""
    save_model(model, str(path))


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load weights into `model`, failing with the names of missing, unexpected or misshapen keys."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}; a checkpoint directory holds {WEIGHTS_NAME}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); re-export the checkpoint") from exc
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
            f"{path} does not fit this architecture; it was saved from a different config.\n"
            + _listing("mismatched shapes", misshapen)
            + _listing("missing keys", missing)
            + _listing("unexpected keys", unexpected)
            + "Build the model from the checkpoint's own config.yaml (from_pretrained does this)."
        )
    model.load_state_dict(state, strict=False)


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
