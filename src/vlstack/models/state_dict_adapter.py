"""Pretrained vision towers in and out: SigLIP and CLIP weights <-> vlstack's ViT.

A `SiglipVisionModel` or `CLIPVisionModel` is a plain ViT, which vlstack's tower contains: global
attention in every block, the checkpoint's position table behind a position conv that starts as the
identity, its norms and activation. CLIP's class token is an input-independent vector (class embedding
+ position 0), so it becomes vlstack's first prompt token. The features are those LLaVA feeds its
projector: the last block's output, without the tower's final norm (`post_layernorm`) or pooling head.
The article's parts start neutral on top: a hierarchical block's window stage is a residual branch whose
output projection starts at zero. Extra prompt tokens cannot be neutral (attention sees them).

An open_clip ViT (a directory with `open_clip_config.json`, read where `open_clip_torch` is installed) is
CLIP's layout under other names: its config and weights are renamed to CLIP's and load the same way.

`tower_to_hf` is the way back, for the LLaVA export (`vlstack.infer.llava`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from vlstack.errors import CheckpointError, ConfigError
from vlstack.models.config import VisionConfig
from vlstack.models.vision import HierarchicalAttention, VisionTransformer

logger = logging.getLogger(__name__)

Kind = Literal["siglip", "clip"]
TOWER_TYPES: dict[str, Kind] = {
    "siglip_vision_model": "siglip", "siglip": "siglip", "clip_vision_model": "clip", "clip": "clip",
}
"""config.json `model_type` -> tower kind; a full SigLIP / CLIP model directory uses its vision tower."""
RESAMPLE = {2: "bilinear", 3: "bicubic"}
"""PIL resampling codes in a preprocessor_config.json -> vlstack's `VisionConfig.resample`."""
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_PLAIN = {"ls_init_value": None, "attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable",
                   "block_type": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
                   "scale_attn_inner": False, "scale_attn": False, "scale_fc": False, "timm_model_name": None}
"""open_clip `vision_cfg` options and the values of a plain CLIP ViT, the only one vlstack rebuilds."""


# --- the config ---------------------------------------------------------------------------------


def tower_kind(path: Path) -> tuple[Kind, dict]:
    """The kind of a local tower directory and its vision config (the `vision_config` of a full model)."""
    if (path / OPEN_CLIP_CONFIG).is_file():
        return "clip", _open_clip_config(path)[0]
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"vision.pretrained_path {str(path)!r} has no config.json (nor {OPEN_CLIP_CONFIG}); "
                              "point it at a folder written by SiglipVisionModel / CLIPVisionModel save_pretrained() "
                              "or an open_clip model folder")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    return kind_of(config.get("model_type"), f"{config_file}: model_type"), config.get("vision_config", config)


def kind_of(model_type: str | None, where: str) -> Kind:
    """The tower kind of a `transformers` model type; `where` names the field for the error."""
    if model_type not in TOWER_TYPES:
        raise ConfigError(f"{where} {model_type!r} is not a supported vision tower; vlstack loads "
                          f"{', '.join(sorted(TOWER_TYPES))}")
    return TOWER_TYPES[model_type]


def pretrained_vision_config(cfg: VisionConfig) -> VisionConfig:
    """`cfg` with the shape, norms, activation and image preprocessing of the tower at `cfg.pretrained_path`.

    `global_every`, `window_size` and `num_prompts` stay the user's (the article's parts on top); a CLIP
    tower adds its class token to the prompts. The result has `pretrained_path` still set: the weights are
    loaded by `load_pretrained_tower` once the tower is built."""
    path = Path(cfg.pretrained_path or "")
    kind, hf = tower_kind(path)
    if (path / OPEN_CLIP_CONFIG).is_file():
        return _open_clip_preprocessing(shaped_like(cfg, hf, kind, path / OPEN_CLIP_CONFIG), path)
    return with_preprocessing(shaped_like(cfg, hf, kind, path / "config.json"), path, kind)


def shaped_like(cfg: VisionConfig, hf: dict, kind: Kind, where: Path) -> VisionConfig:
    """`cfg` with the shape, norms and activation of the `transformers` vision config `hf` (read from `where`)."""
    width, intermediate = hf["hidden_size"], hf["intermediate_size"]
    shaped = dataclasses.replace(
        cfg,
        image_size=hf["image_size"], patch_size=hf["patch_size"], in_channels=hf.get("num_channels", 3),
        width=width, layers=hf["num_hidden_layers"], heads=hf["num_attention_heads"],
        mlp_ratio=intermediate / width, norm_eps=hf["layer_norm_eps"], activation=hf["hidden_act"],
        patch_bias=kind == "siglip", pre_norm=kind == "clip", final_norm=False, stem="patch",
        num_prompts=cfg.num_prompts + (kind == "clip"),
    )
    if round(width * shaped.mlp_ratio) != intermediate:
        raise ConfigError(f"{where}: intermediate_size {intermediate} is not a multiple of hidden_size {width} "
                          "that vlstack can rebuild")
    return shaped


def with_preprocessing(cfg: VisionConfig, path: Path, kind: Kind) -> VisionConfig:
    """Image size, mean/std and resize mode from the image processor saved in `path` (preprocessor_config.json,
    or the `image_processor` of a processor_config.json); a CLIP one resizes the shorter side and centre-crops.
    Without either file, the architecture's published defaults."""
    from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    file = path / "preprocessor_config.json"
    if file.is_file():
        pre = json.loads(file.read_text(encoding="utf-8"))
    elif (path / "processor_config.json").is_file():
        file = path / "processor_config.json"
        pre = json.loads(file.read_text(encoding="utf-8")).get("image_processor", {})
    else:
        logger.warning("%s has no preprocessor_config.json; using the %s defaults", path, kind)
        mean, std = ((OPENAI_CLIP_MEAN, OPENAI_CLIP_STD) if kind == "clip"
                     else (IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD))
        return dataclasses.replace(cfg, image_mean=tuple(mean), image_std=tuple(std), resample="bicubic",
                                   crop=kind == "clip")
    size = pre.get("size") or {}
    side = size.get("shortest_edge") or size.get("height")
    if size.get("height") is not None and size.get("width") != size["height"]:
        raise ConfigError(f"{file}: size {size} is not square; vlstack's towers take square images")
    crop = bool(pre.get("do_center_crop", False))
    if crop:
        crop_size = pre.get("crop_size") or {}
        side = crop_size.get("height", crop_size) if isinstance(crop_size, dict) else crop_size
    if side != cfg.image_size:
        raise ConfigError(f"{file}: the image size {side} ('{'crop_size' if crop else 'size'}') disagrees with "
                          f"image_size {cfg.image_size} in {path / 'config.json'}")
    resample = RESAMPLE.get(pre.get("resample", 3))
    if resample is None:
        raise ConfigError(f"{file}: resample {pre.get('resample')!r} is not supported; vlstack resizes with "
                          "2 (bilinear) or 3 (bicubic)")
    return dataclasses.replace(cfg, image_mean=tuple(pre["image_mean"]), image_std=tuple(pre["image_std"]),
                               resample=resample, crop=crop)


def _open_clip_config(path: Path) -> tuple[dict, dict]:
    """An open_clip model's vision config in CLIP's `transformers` names, and its `preprocess_cfg`."""
    file = path / OPEN_CLIP_CONFIG
    config = json.loads(file.read_text(encoding="utf-8"))
    model = config.get("model_cfg", {})
    vision = model.get("vision_cfg", {})
    for key, plain in OPEN_CLIP_PLAIN.items():
        if vision.get(key, plain) != plain:
            raise ConfigError(f"{file}: model_cfg.vision_cfg.{key} = {vision[key]!r}; vlstack rebuilds the plain CLIP "
                              f"ViT of open_clip ({key} = {plain!r})")
    width, head_width = vision["width"], vision.get("head_width", 64)
    hf = {"hidden_size": width, "intermediate_size": round(width * vision.get("mlp_ratio", 4.0)),
          "num_hidden_layers": vision["layers"], "num_attention_heads": width // head_width,
          "image_size": vision["image_size"], "patch_size": vision["patch_size"], "layer_norm_eps": 1e-5,
          "hidden_act": "quick_gelu" if model.get("quick_gelu") else "gelu"}
    return hf, config.get("preprocess_cfg", {})


def _open_clip_preprocessing(cfg: VisionConfig, path: Path) -> VisionConfig:
    """open_clip's `preprocess_cfg` (its defaults where a key is missing): mean/std, interpolation, and
    `resize_mode` shortest (resize the shorter side, centre-crop) or squash."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    file = path / OPEN_CLIP_CONFIG
    pre = _open_clip_config(path)[1]
    size = pre.get("size", cfg.image_size)
    mode, interpolation = pre.get("resize_mode", "shortest"), pre.get("interpolation", "bicubic")
    if size not in (cfg.image_size, [cfg.image_size] * 2):
        raise ConfigError(f"{file}: preprocess_cfg.size {size} disagrees with vision_cfg.image_size {cfg.image_size}")
    if mode not in ("shortest", "squash") or interpolation not in ("bilinear", "bicubic"):
        raise ConfigError(f"{file}: preprocess_cfg resize_mode {mode!r} / interpolation {interpolation!r}; vlstack "
                          "resizes with shortest or squash, bilinear or bicubic")
    return dataclasses.replace(cfg, image_mean=tuple(pre.get("mean", OPENAI_CLIP_MEAN)),
                               image_std=tuple(pre.get("std", OPENAI_CLIP_STD)), resample=interpolation,
                               crop=mode == "shortest")


def _open_clip_weights(path: Path) -> dict[str, torch.Tensor]:
    """The open_clip model's vision tower, renamed to CLIPVisionModel's keys."""
    try:
        import open_clip
    except ImportError as exc:
        raise ConfigError(f"{path} is an open_clip model; install the [clip] extra (pip install -e '.[clip]')") from exc
    try:
        visual = open_clip.create_model(f"local-dir:{path}").visual.state_dict()
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot load the open_clip model from {path}: {exc}") from exc
    state = {"embeddings.patch_embedding.weight": visual["conv1.weight"],
             "embeddings.class_embedding": visual["class_embedding"],
             "embeddings.position_embedding.weight": visual["positional_embedding"],
             "pre_layrnorm.weight": visual["ln_pre.weight"], "pre_layrnorm.bias": visual["ln_pre.bias"]}
    layers = 1 + max(int(key.split(".")[2]) for key in visual if key.startswith("transformer.resblocks."))
    for i in range(layers):
        source, target = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for part in ("weight", "bias"):
            q, k, v = visual[f"{source}attn.in_proj_{part}"].chunk(3)
            state |= {f"{target}self_attn.q_proj.{part}": q, f"{target}self_attn.k_proj.{part}": k,
                      f"{target}self_attn.v_proj.{part}": v,
                      f"{target}self_attn.out_proj.{part}": visual[f"{source}attn.out_proj.{part}"],
                      f"{target}layer_norm1.{part}": visual[f"{source}ln_1.{part}"],
                      f"{target}layer_norm2.{part}": visual[f"{source}ln_2.{part}"],
                      f"{target}mlp.fc1.{part}": visual[f"{source}mlp.c_fc.{part}"],
                      f"{target}mlp.fc2.{part}": visual[f"{source}mlp.c_proj.{part}"]}
    return state


# --- the weights --------------------------------------------------------------------------------


def load_pretrained_tower(tower: VisionTransformer, path: str | Path) -> None:
    """Fill `tower` (built from `pretrained_vision_config`) with the weights of the local tower at `path`."""
    from transformers import CLIPVisionModel, SiglipVisionModel

    path = Path(path)
    kind, _ = tower_kind(path)
    if (path / OPEN_CLIP_CONFIG).is_file():
        load_hf_tower_weights(tower, _open_clip_weights(path), kind)
        return
    model_class = CLIPVisionModel if kind == "clip" else SiglipVisionModel
    try:
        hf = model_class.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the {kind} vision tower from {path}: {exc}") from exc
    load_hf_tower_weights(tower, hf.state_dict(), kind)


def load_hf_tower_weights(tower: VisionTransformer, hf: dict[str, torch.Tensor], kind: Kind) -> None:
    """`hf`: a SiglipVisionModel / CLIPVisionModel state dict. The article's parts are set neutral (the position
    conv to the identity, window stages to zero); any prompts beyond CLIP's class token keep their init."""
    mapped = {ours: hf[theirs] for ours, theirs in _one_to_one(tower, kind)}
    for i in range(tower.cfg.layers):
        ours, theirs = _attention_prefix(tower, i), f"encoder.layers.{i}.self_attn."
        for part in ("weight", "bias"):
            mapped[f"{ours}qkv.{part}"] = torch.cat([hf[f"{theirs}{p}_proj.{part}"] for p in "qkv"])
    positions = hf["embeddings.position_embedding.weight"]  # [(1 +) gh*gw, D]
    if kind == "clip":
        prompts = tower.prompts.detach().clone()
        prompts[0, 0] = hf["embeddings.class_embedding"] + positions[0]
        mapped["prompts"], positions = prompts, positions[1:]
    mapped["pos_embed.table"] = positions[None]
    missing, unexpected = tower.load_state_dict(mapped, strict=False)
    kept = [k for k in missing if not k.startswith("pos_embed.conv.") and ".window_attn." not in k and k != "prompts"]
    if kept or unexpected:
        raise CheckpointError(f"the {kind} weights do not fit the tower: missing {kept}, unexpected {unexpected}")
    tower.pos_embed.reset_conv_to_identity()
    with torch.no_grad():
        for block in tower.blocks:
            if isinstance(block.attn, HierarchicalAttention):
                nn.init.zeros_(block.attn.window_attn.proj.weight)
                nn.init.zeros_(block.attn.window_attn.proj.bias)


def tower_to_hf(tower: VisionTransformer) -> tuple[Kind, dict, dict[str, torch.Tensor]]:
    """The tower as a SigLIP (no prompts, patch bias) or CLIP (one prompt: the class token; pre-norm) vision
    model: its kind, `transformers` vision config and state dict. A tower with a part LLaVA's
    towers lack is a `ConfigError` naming the field."""
    cfg = tower.cfg
    kind: Kind = "clip" if cfg.pre_norm else "siglip"
    problems = []
    if any(not tower.is_global(i) for i in range(cfg.layers)):
        problems.append(f"vision.global_every = {cfg.global_every} (hierarchical window attention)")
    if cfg.num_prompts != (kind == "clip"):
        problems.append(f"vision.num_prompts = {cfg.num_prompts} (visual prompt tokens; a CLIP-style tower with "
                        "pre_norm may have one, its class token)")
    if cfg.final_norm:
        problems.append("vision.final_norm = true (LLaVA takes the last block's output without a final norm)")
    if cfg.patch_bias != (kind == "siglip"):
        problems.append(f"vision.patch_bias = {cfg.patch_bias} with pre_norm = {cfg.pre_norm}")
    if cfg.stem != "patch":
        problems.append(f"vision.stem = {cfg.stem} (a convolutional stem; LLaVA's towers patchify in one convolution)")
    if problems:
        raise ConfigError("this tower has no transformers counterpart: " + "; ".join(problems))
    grid = cfg.image_size // cfg.patch_size
    with torch.no_grad():
        positions = tower.pos_embed((grid, grid))[0]  # the conv folded in: [gh*gw, D]
        state = {theirs: tower.state_dict()[ours] for ours, theirs in _one_to_one(tower, kind)}
        for i in range(cfg.layers):
            qkv = {part: tower.state_dict()[f"{_attention_prefix(tower, i)}qkv.{part}"].chunk(3)
                   for part in ("weight", "bias")}
            for j, p in enumerate("qkv"):
                for part in ("weight", "bias"):
                    state[f"encoder.layers.{i}.self_attn.{p}_proj.{part}"] = qkv[part][j]
        if kind == "clip":
            state["embeddings.class_embedding"] = tower.prompts[0, 0].clone()
            positions = torch.cat([torch.zeros_like(positions[:1]), positions])
        state["embeddings.position_embedding.weight"] = positions.clone()
        state["post_layernorm.weight"] = torch.ones(cfg.width)  # unused by LLaVA; the HF class requires it
        state["post_layernorm.bias"] = torch.zeros(cfg.width)
    config = {
        "model_type": f"{kind}_vision_model", "hidden_size": cfg.width,
        "intermediate_size": round(cfg.width * cfg.mlp_ratio),
        "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads, "num_channels": cfg.in_channels,
        "image_size": cfg.image_size, "patch_size": cfg.patch_size, "hidden_act": cfg.activation,
        "layer_norm_eps": cfg.norm_eps,
    }
    if kind == "siglip":
        config["vision_use_head"] = False
    return kind, config, state


def _attention_prefix(tower: VisionTransformer, index: int) -> str:
    """Where block `index` keeps the attention a pretrained tower fills (a hierarchical block's global stage)."""
    return f"blocks.{index}.attn." + ("" if tower.is_global(index) else "global_attn.")


def _one_to_one(tower: VisionTransformer, kind: Kind) -> list[tuple[str, str]]:
    """(vlstack key, transformers key) for the tensors that map unchanged."""
    pairs = [("patch_embed.proj.weight", "embeddings.patch_embedding.weight")]
    if kind == "siglip":
        pairs.append(("patch_embed.proj.bias", "embeddings.patch_embedding.bias"))
    else:
        pairs += [(f"pre_norm.{p}", f"pre_layrnorm.{p}") for p in ("weight", "bias")]
    for i in range(tower.cfg.layers):
        ours, theirs = f"blocks.{i}.", f"encoder.layers.{i}."
        attention = _attention_prefix(tower, i)
        for p in ("weight", "bias"):
            pairs += [(f"{ours}norm1.{p}", f"{theirs}layer_norm1.{p}"), (f"{ours}norm2.{p}", f"{theirs}layer_norm2.{p}"),
                      (f"{attention}proj.{p}", f"{theirs}self_attn.out_proj.{p}"),
                      (f"{ours}mlp.fc1.{p}", f"{theirs}mlp.fc1.{p}"), (f"{ours}mlp.fc2.{p}", f"{theirs}mlp.fc2.{p}")]
    return pairs
