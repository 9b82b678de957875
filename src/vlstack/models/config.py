"""Model configs and the size presets (nano, tiny, small, qwen-image-s/m/l).

The configs live beside the models they describe; `vlstack.config` holds the
machinery (YAML, overrides, validation) that every config shares.

The qwen-image presets reproduce the article's table per component
(vision / language / fusion): S = 380M / 1.8B / 420M, M = 980M / 7B / 1.2B,
L = 2.3B / 14B / 3.1B. "Fusion" counts every cross-modal parameter: the fusion
transformer, its input projections, the LM projector and the four heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vlstack.errors import ConfigError

IMAGE_MEAN = (0.481, 0.457, 0.408)
"""The article's per-channel mean of [0, 1] pixels; a pretrained tower brings its own."""
IMAGE_STD = (0.268, 0.261, 0.275)


@dataclass
class VisionConfig:
    """ViT with dynamic position embedding, hierarchical attention and visual prompts.

    With `pretrained_path`, the tower's shape, activation, norms and image preprocessing come from a
    local SigLIP or CLIP directory (`models/state_dict_adapter.py`); `global_every`, `window_size` and
    `num_prompts` then add the article's parts on top (1, any, 0 keep the checkpoint's tower as it is).
    """

    image_size: int = 384
    """Side of the square image the position table is built for; other sizes interpolate it."""
    patch_size: int = 14
    stem: Literal["patch", "conv"] = "patch"
    """How pixels become patch tokens. patch: one `patch_size` x `patch_size` convolution (ViT's, and every
    pretrained tower's); conv: 3x3 stride-2 convolutions with BatchNorm and ReLU down to the same patch grid,
    then a 1x1 (Xiao et al. 2021, "Early convolutions help transformers see better"): on small data a tower
    learns shapes far sooner (64 px scenes, 300 supervised steps: 0.63 held-out shape accuracy with the patch
    stem, 0.999 with this one). Needs a power-of-two `patch_size`."""
    in_channels: int = 3
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    window_size: int = 7
    """Side, in patches, of the non-overlapping windows of hierarchical attention."""
    global_every: int = 4
    """Every n-th block uses global attention only; the others are hierarchical (window, then
    global). 1 makes every block global; 0 makes every block hierarchical."""
    num_prompts: int = 8
    """Learnable visual prompt tokens prepended to the patches; their outputs pool the image."""
    norm_eps: float = 1e-6
    activation: str = "gelu"
    """The MLP's activation, a `transformers` name: gelu, gelu_pytorch_tanh (SigLIP), quick_gelu (CLIP)."""
    patch_bias: bool = True
    """Whether the patch embedding has a bias (CLIP's has none)."""
    pre_norm: bool = False
    """A LayerNorm over [prompts ; patches] before the first block (CLIP's `pre_layrnorm`)."""
    final_norm: bool = True
    """A LayerNorm after the last block. Pretrained towers come without it: LLaVA feeds the projector the
    last block's output, and so does vlstack with such a tower."""
    image_mean: tuple[float, float, float] = IMAGE_MEAN
    image_std: tuple[float, float, float] = IMAGE_STD
    resample: Literal["bilinear", "bicubic"] = "bilinear"
    crop: bool = False
    """Resize the shorter side to `image_size` and centre-crop (CLIP); otherwise resize to the square."""
    pretrained_path: str | None = None
    """A local SigLIP or CLIP directory (`save_pretrained`); its weights and shape replace the fields above.
    Nothing is ever downloaded."""


@dataclass
class LanguageConfig:
    """A `transformers` causal LM, built from these fields or loaded from a local directory."""

    model_type: str = "qwen2"
    """A `transformers` model type with a causal-LM class (qwen2, llama, ...)."""
    hidden_size: int = 2048
    layers: int = 24
    heads: int = 16
    kv_heads: int = 16
    intermediate_size: int = 5504
    vocab_size: int = 151936
    max_positions: int = 8192
    rope_theta: float = 1_000_000.0
    tie_embeddings: bool = False
    pretrained_path: str | None = None
    """A local directory with a saved `transformers` causal LM; its weights replace the random
    init and its shape overrides the fields above. Nothing is ever downloaded."""
    hf_config: dict[str, Any] | None = None
    """The whole `transformers` config of an LM that came from a checkpoint (head_dim, norm eps, rope
    scaling, ...: more than the fields above say); when set, the LM is built from it."""


@dataclass
class FusionConfig:
    """Bidirectional transformer over [projected visual tokens ; text hidden states]."""

    width: int = 2048
    layers: int = 6
    heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6


@dataclass
class ModelConfig:
    """The whole Qwen-Image model: vision tower, language model, fusion and heads."""

    name: str = "custom"
    """The preset this config came from (informational)."""
    vision: VisionConfig = field(default_factory=VisionConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    itc_dim: int = 512
    """Width of the shared image-text embedding space of the ITC heads."""
    temperature_init: float = 0.07
    image_token_id: int | None = None
    """Token id of `<image>`; set from the tokenizer when the model is built with one."""
    patch_positions: bool = True
    """A learned 2-D position table added to the projected patch tokens (`QwenImageModel.image_features`);
    LLaVA has none, so a model exported to `transformers` is trained without it."""

    @classmethod
    def from_preset(cls, name: str) -> ModelConfig:
        """The named preset; an unknown name lists the known ones."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return PRESETS[name]()


def _nano() -> ModelConfig:
    """Unit tests: < 5M parameters, 32 px images, runs in milliseconds."""
    return ModelConfig(
        name="nano",
        vision=VisionConfig(image_size=32, patch_size=8, width=64, layers=2, heads=4, window_size=2,
                            global_every=2, num_prompts=2),
        language=LanguageConfig(hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=128,
                                vocab_size=512, max_positions=256, tie_embeddings=True),
        fusion=FusionConfig(width=64, layers=1, heads=4),
        itc_dim=32,
    )


def _tiny() -> ModelConfig:
    """The demo: learns the synthetic tasks on 2 CPU cores in minutes."""
    return ModelConfig(
        name="tiny",
        vision=VisionConfig(image_size=64, patch_size=8, stem="conv", width=192, layers=4, heads=4, window_size=4,
                            global_every=2, num_prompts=4),
        language=LanguageConfig(hidden_size=192, layers=4, heads=4, kv_heads=4, intermediate_size=512,
                                vocab_size=2048, max_positions=512, tie_embeddings=True),
        fusion=FusionConfig(width=192, layers=2, heads=4),
        itc_dim=128,
    )


def _small() -> ModelConfig:
    """About 100M parameters: CPU throughput benchmarks."""
    return ModelConfig(
        name="small",
        vision=VisionConfig(image_size=224, patch_size=16, width=384, layers=12, heads=6, window_size=7,
                            global_every=3, num_prompts=8),
        language=LanguageConfig(hidden_size=512, layers=8, heads=8, kv_heads=8, intermediate_size=1408,
                                vocab_size=32000, max_positions=2048, tie_embeddings=True),
        fusion=FusionConfig(width=512, layers=4, heads=8),
        itc_dim=256,
    )


def _qwen_image_s() -> ModelConfig:
    """The article's table: vision 380M / language 1.8B (shaped like Qwen-1.8B) / fusion 420M = 2.6B."""
    return ModelConfig(
        name="qwen-image-s",
        vision=VisionConfig(width=1024, layers=24, heads=16, mlp_ratio=4.0, global_every=4),
        language=LanguageConfig(hidden_size=2048, layers=24, heads=16, kv_heads=16, intermediate_size=5440),
        fusion=FusionConfig(width=2048, layers=6, heads=16, mlp_ratio=5.8),
        itc_dim=1024,
    )


def _qwen_image_m() -> ModelConfig:
    """The article's table: vision 980M / language 7B (shaped like Qwen-7B) / fusion 1.2B = 9.18B."""
    return ModelConfig(
        name="qwen-image-m",
        vision=VisionConfig(width=1280, layers=40, heads=16, mlp_ratio=4.0, global_every=4),
        language=LanguageConfig(hidden_size=4096, layers=32, heads=32, kv_heads=32, intermediate_size=11008,
                                tie_embeddings=True),
        fusion=FusionConfig(width=3072, layers=10, heads=24, mlp_ratio=4.0),
        itc_dim=1024,
    )


def _qwen_image_l() -> ModelConfig:
    """The article's table: vision 2.3B / language 14B (shaped like Qwen-14B) / fusion 3.1B = 19.4B."""
    return ModelConfig(
        name="qwen-image-l",
        vision=VisionConfig(width=1664, layers=48, heads=16, mlp_ratio=8192 / 1664, global_every=6),
        language=LanguageConfig(hidden_size=5120, layers=40, heads=40, kv_heads=40, intermediate_size=13696),
        fusion=FusionConfig(width=4096, layers=15, heads=32, mlp_ratio=4.0),
        itc_dim=1024,
    )


ARTICLE_TABLE: dict[str, dict[str, int]] = {
    "qwen-image-s": {"vision": 380_000_000, "language": 1_800_000_000, "fusion": 420_000_000, "total": 2_600_000_000},
    "qwen-image-m": {"vision": 980_000_000, "language": 7_000_000_000, "fusion": 1_200_000_000, "total": 9_180_000_000},
    "qwen-image-l": {"vision": 2_300_000_000, "language": 14_000_000_000, "fusion": 3_100_000_000,
                     "total": 19_400_000_000},
}
"""Parameter counts per component from the article's table (section 1.3)."""

PRESETS = {
    "nano": _nano,
    "tiny": _tiny,
    "small": _small,
    "qwen-image-s": _qwen_image_s,
    "qwen-image-m": _qwen_image_m,
    "qwen-image-l": _qwen_image_l,
}
