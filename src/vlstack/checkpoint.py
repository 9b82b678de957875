"""A checkpoint directory and its one loader: `save_model`, `load_model` (fp32 or int8).

A checkpoint is a directory: `config.yaml` (the ModelConfig), `model.safetensors`
(safetensors only, never pickle; weights over `max_shard_size` are split into
`model-0000i-of-0000n.safetensors` shards with a `model.safetensors.index.json`, the
layout `transformers` uses), `tokenizer/`, and for an int8 checkpoint `quantization.yaml`
(the int8 weights and scales in torchao's safetensors layout, the tensor-subclass
description in the file header). Everything is written atomically. A training run adds its
resumable state (`dcp/` or `deepspeed/`, `trainer_state.json`) beside these files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from huggingface_hub import save_torch_state_dict
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from vlstack.config import from_dict, read_yaml, save_yaml
from vlstack.errors import CheckpointError, ConfigError
from vlstack.models.config import ModelConfig
from vlstack.models.initialize import build_empty, local_rows, materialize
from vlstack.models.tokenizer import load_tokenizer
from vlstack.models.vlm import QwenImageModel

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.yaml"
TOKENIZER_DIR = "tokenizer"
QUANTIZATION_NAME = "quantization.yaml"
METHODS: tuple[str, ...] = ("int8-dynamic", "int8-weight-only")
Method = Literal["int8-dynamic", "int8-weight-only"]


# --- the model: save and load -------------------------------------------------------------------


def save_model(model: QwenImageModel, directory: str | Path, tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
    """Write `config.yaml`, `model.safetensors` and (if given) `tokenizer/` into `directory`, atomically."""
    with atomic_directory(directory) as tmp:
        write_model_files(model, tmp, tokenizer)
    return Path(directory)


def write_model_files(model: QwenImageModel, directory: Path, tokenizer: PreTrainedTokenizerBase | None = None,
                      state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """The checkpoint files, written into an existing directory; `state_dict` replaces the model's own
    weights (e.g. the consolidated weights of a sharded model)."""
    save_yaml(model.config, directory / CONFIG_NAME)
    save_weights(model.state_dict() if state_dict is None else state_dict, directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))


def model_config(directory: str | Path) -> ModelConfig:
    """The ModelConfig a checkpoint directory was saved with."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{Path(directory)} is not a vlstack checkpoint (no {CONFIG_NAME}); pass a directory "
                              "written by save_model() (a run's checkpoint/ or a stage's model/)")
    return from_dict(ModelConfig, read_yaml(path))


def load_model(directory: str | Path, empty: bool = False) -> QwenImageModel:
    """The model of a checkpoint directory, fp32 or int8 (`quantization.yaml` says which), in eval mode.
    An int8 model runs on torchao's kernels; `vlstack.infer.quantize.select_kernel` picks a faster one.

    `empty` (fp32 only): the model on the meta device, for a Trainer to place (under FSDP2: shard) and then fill
    with `load_weights(model, directory)`, so that no rank reads more than its share."""
    directory = Path(directory)
    config = model_config(directory)
    quantization = quantization_of(directory)
    if quantization is None:
        model = build_empty(lambda: QwenImageModel(config))
        if not empty:
            materialize(model, torch.device("cpu"))
            load_weights(model, directory)
        return model.eval()
    if empty:
        raise CheckpointError(f"{directory} holds int8 weights, which do not train; fine-tune its fp32 checkpoint")
    model = QwenImageModel(config)
    int8_structure(model, quantization.method)  # the int8 structure the saved tensors fill
    try:
        model.load_state_dict(read_int8_weights(directory / WEIGHTS_NAME), assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the int8 weights in {directory} do not fit its config.yaml: {exc}") from exc
    return model.eval()


def load_checkpoint_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a checkpoint; one with more tokens than the model's vocabulary is a CheckpointError."""
    tokenizer = load_tokenizer(Path(directory) / TOKENIZER_DIR)
    vocab = model_config(directory).language.vocab_size
    if len(tokenizer) > vocab:
        raise CheckpointError(f"{Path(directory) / TOKENIZER_DIR} has {len(tokenizer)} tokens, more than the "
                              f"language.vocab_size = {vocab} of {Path(directory) / CONFIG_NAME}; the tokenizer is "
                              "not the one this model was trained with")
    return tokenizer


# --- int8 checkpoints ---------------------------------------------------------------------------


@dataclass
class QuantizationConfig:
    """What `quantization.yaml` records next to the int8 weights."""

    method: Method = "int8-dynamic"
    """int8-dynamic: int8 weights and activations; int8-weight-only: int8 weights, fp32 activations."""
    modules: str = "every nn.Linear (vision, language model incl. lm_head, fusion, projector, heads)"
    """Which layers hold int8 weights (informational)."""

    def __post_init__(self) -> None:
        check_method(self.method)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown quantization method {method!r}; choose one of: {', '.join(METHODS)}")


def quantization_of(directory: str | Path) -> QuantizationConfig | None:
    """The quantization recorded in a checkpoint directory; None for an fp32 checkpoint."""
    path = Path(directory) / QUANTIZATION_NAME
    return from_dict(QuantizationConfig, read_yaml(path)) if path.is_file() else None


def int8_structure(model: nn.Module, method: str) -> None:
    """Replace the weight of every nn.Linear by a torchao Int8Tensor (per-output-channel scales)."""
    check_method(method)
    from torchao import quantization as ao

    config = (ao.Int8DynamicActivationInt8WeightConfig(set_inductor_config=False) if method == "int8-dynamic"
              else ao.Int8WeightOnlyConfig(set_inductor_config=False))
    ao.quantize_(model, config, filter_fn=lambda module, _name: isinstance(module, nn.Linear))


def write_int8_model(model: QwenImageModel, method: str, directory: Path,
                     tokenizer_dir: Path | None = None) -> None:
    """The files of an int8 checkpoint of `model` (already in `int8_structure`), into an existing directory."""
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    tensors, metadata = flatten_tensor_state_dict(model.state_dict())
    save_yaml(model.config, directory / CONFIG_NAME)
    save_yaml(QuantizationConfig(method=method), directory / QUANTIZATION_NAME)  # type: ignore[arg-type]
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / WEIGHTS_NAME), metadata=metadata)
    if tokenizer_dir is not None and tokenizer_dir.is_dir():
        shutil.copytree(tokenizer_dir, directory / TOKENIZER_DIR)


def read_int8_weights(path: Path) -> dict[str, torch.Tensor]:
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    try:
        with safe_open(str(path), "pt") as file:
            metadata = file.metadata() or {}
        tensors = load_file(str(path))
        state, leftover = unflatten_tensor_state_dict(tensors, metadata)
    except (SafetensorError, OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable int8 checkpoint ({exc}); write it with "
                              "`vlstack quantize`") from exc
    if leftover:
        raise CheckpointError(f"{path} holds tensors its header does not describe: {sorted(leftover)[:5]}")
    return state


# --- files ----------------------------------------------------------------------------------------


COMPLETE = ".complete"
"""Written last into a new directory, after every file in it is on disk: the sign that it is whole."""


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `target` (`commit_directory`) only if the block succeeds.

    A run killed at any point leaves the previous directory or the new one whole, possibly under a
    temporary name: `recover_directory` (called here first, and by every resume) puts the newest whole
    one back at `target` and removes the rest.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        commit_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def commit_directory(tmp: Path, target: Path) -> None:
    """Make the finished directory `tmp` (a sibling named `.{target.name}.tmp-*`) the new `target`: its files
    and itself are fsynced and marked complete, then `target` is moved aside and `tmp` moved in."""
    (tmp / COMPLETE).write_text("", encoding="utf-8")
    fsync_tree(tmp)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    _fsync_directory(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_directory(target: str | Path) -> Path | None:
    """After an interrupted `atomic_directory`: put the newest whole version back at `target` (a complete
    new one, else the previous one) and remove every leftover temporary; returns `target` if it exists."""
    target = Path(target)
    if not target.parent.is_dir():
        return None
    leftovers = sorted([*target.parent.glob(f".{target.name}.tmp-*"), *target.parent.glob(f".{target.name}.old-*")],
                       key=lambda p: p.stat().st_mtime, reverse=True)
    if not target.exists():
        complete = [p for p in leftovers if ".tmp-" in p.name and (p / COMPLETE).is_file()]
        previous = [p for p in leftovers if ".old-" in p.name]
        chosen = (complete or previous or [None])[0]
        if chosen is not None:
            chosen.rename(target)
            _fsync_directory(target.parent)
            leftovers.remove(chosen)
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return target if target.exists() else None


def fsync_tree(root: Path) -> None:
    """fsync every file under `root`, then every directory, deepest first (so a crash cannot lose them)."""
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            _fsync_directory(path)
    _fsync_directory(root)


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


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
    """Fill `model`'s tensors from a checkpoint directory, each whole or (under FSDP2) this rank's shard of it,
    reading only the rows it holds; fails with the names of missing, unexpected or misshapen keys."""
    directory = Path(directory)
    files = weight_files(directory)
    shapes = {}
    for path in files:
        with _open_weights(path) as f:
            shapes.update({key: (path, tuple(f.get_slice(key).get_shape())) for key in f.keys()})
    expected = model.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in shapes and not _is_tied_alias(expected, k, shapes)]
    unexpected = [k for k in shapes if k not in expected]
    misshapen = [f"{k}: checkpoint {shapes[k][1]} vs model {tuple(expected[k].shape)}"
                 for k in shapes if k in expected and shapes[k][1] != tuple(expected[k].shape)]
    if missing or unexpected or misshapen:
        raise CheckpointError(
            f"the weights in {directory} do not fit this architecture; it was saved from a different config.\n"
            + _listing("mismatched shapes", misshapen)
            + _listing("missing keys", missing)
            + _listing("unexpected keys", unexpected)
            + "Build the model from the checkpoint's own config.yaml (from_pretrained does this)."
        )
    with torch.no_grad():
        for path in files:
            with _open_weights(path) as f:
                for key in f.keys():
                    local, start = local_rows(expected[key])
                    stored = f.get_slice(key)
                    local.copy_(stored[start : start + len(local)] if local.ndim else f.get_tensor(key))


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory: one file, or the shards its index lists."""
    index = directory / INDEX_NAME
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index} is not a weight index ({type(exc).__name__}: {exc})") from None
        outside = [name for name in files if not isinstance(name, str) or Path(name).name != name]
        if outside:
            raise CheckpointError(f"{index} names weight files outside its directory: {outside[:3]}; a shard must "
                                  "be a file name in the checkpoint directory")
        return [directory / name for name in files]
    if (directory / WEIGHTS_NAME).is_file():
        return [directory / WEIGHTS_NAME]
    raise CheckpointError(f"no weights in {directory}; a checkpoint directory holds {WEIGHTS_NAME} or {INDEX_NAME}")


@contextlib.contextmanager
def _open_weights(path: Path) -> Iterator:
    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); re-export the checkpoint") from exc


def _is_tied_alias(tensors: dict[str, torch.Tensor], key: str, stored: dict) -> bool:
    """True when `key` is the same tensor as one that the file does hold (tied weights)."""
    return any(k in stored and t is tensors[key] for k, t in tensors.items() if k != key)


def _listing(title: str, items: list[str], limit: int = 10) -> str:
    if not items:
        return ""
    shown = "\n".join(f"  {item}" for item in items[:limit])
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{title} ({len(items)}):\n{shown}{more}\n"
