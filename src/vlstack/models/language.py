"""The language model: any `transformers` causal LM, built from config or loaded from disk.

Qwen2 is the default family. A local directory (`LanguageConfig.pretrained_path`)
loads real weights through `from_pretrained(..., local_files_only=True)`; nothing is
ever fetched from a hub.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from vlstack.errors import CheckpointError, ConfigError
from vlstack.models.config import LanguageConfig


def build_language_model(cfg: LanguageConfig) -> tuple[PreTrainedModel, LanguageConfig]:
    """The causal LM and its config, with the shape read back from a loaded checkpoint.

    The returned config has `pretrained_path=None`: once loaded, the weights travel
    inside the vlstack checkpoint, and the config describes their shape.
    """
    if cfg.pretrained_path:
        model = _load_local(Path(cfg.pretrained_path))
        return model, language_config_from_hf(model.config)
    if cfg.hf_config:
        hf_config = AutoConfig.for_model(**cfg.hf_config)
        hf_config._attn_implementation = "sdpa"
        return AutoModelForCausalLM.from_config(hf_config), cfg
    try:
        hf_config = AutoConfig.for_model(
            cfg.model_type,
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads,
            num_key_value_heads=cfg.kv_heads,
            intermediate_size=cfg.intermediate_size,
            vocab_size=cfg.vocab_size,
            max_position_embeddings=cfg.max_positions,
            rope_theta=cfg.rope_theta,
            tie_word_embeddings=cfg.tie_embeddings,
        )
    except ValueError as exc:
        raise ConfigError(f"language.model_type {cfg.model_type!r} is not a transformers model type: {exc}") from exc
    hf_config._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(hf_config), cfg


def _load_local(path: Path) -> PreTrainedModel:
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"language.pretrained_path {str(path)!r} is not a transformers model directory (no config.json); "
            "point it at a folder written by save_pretrained()"
        )
    try:
        return AutoModelForCausalLM.from_pretrained(path, local_files_only=True, attn_implementation="sdpa")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the language model from {path}: {exc}") from exc


def language_config_from_hf(c: PretrainedConfig) -> LanguageConfig:
    """The LanguageConfig describing a `transformers` causal LM config (for a model already loaded)."""
    rope = getattr(c, "rope_parameters", None) or {}
    return LanguageConfig(
        model_type=c.model_type,
        hidden_size=c.hidden_size,
        layers=c.num_hidden_layers,
        heads=c.num_attention_heads,
        kv_heads=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
        intermediate_size=c.intermediate_size,
        vocab_size=c.vocab_size,
        max_positions=c.max_position_embeddings,
        rope_theta=float(rope.get("rope_theta", LanguageConfig.rope_theta)),
        tie_embeddings=bool(c.tie_word_embeddings),
        pretrained_path=None,
        hf_config={k: v for k, v in c.to_diff_dict().items() if k not in _NOT_SHAPE},
    )


_NOT_SHAPE = ("transformers_version", "architectures", "_name_or_path", "_attn_implementation_autoset")
"""Fields of a saved `transformers` config that describe where it came from, not the model."""


def decoder(model: PreTrainedModel) -> nn.Module:
    """The LM without its vocabulary head: input ids or embeddings -> last hidden states."""
    return model.get_decoder()


__all__ = ["build_language_model", "decoder", "language_config_from_hf"]
