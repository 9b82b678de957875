"""QwenImageModel: the vision tower, the language model, the fusion encoder and the heads, wired.

Two paths through the model:
- the pretraining path: `encode_image` / `encode_text` give the ITC embeddings,
  `fuse` runs the fusion encoder, and `forward` returns what the ITC, ITM, MLM and
  VTM losses need for matching pairs;
- the generation path (LLaVA style): `image_features` projects the vision tokens into
  the LM's embedding space, `embed_inputs` splices them into the LM's input embeddings
  at the `<image>` placeholders, and `generate` decodes with the LM's KV cache.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from vlstack.errors import ConfigError, InputError
from vlstack.models.config import ModelConfig
from vlstack.models.fusion import FusionTransformer
from vlstack.models.heads import ITCHead, ITMHead, MLMHead
from vlstack.models.initialize import build_empty, init_weights, is_empty
from vlstack.models.language import build_language_model, decoder, language_config_from_hf
from vlstack.models.layers import MLP
from vlstack.models.state_dict_adapter import load_pretrained_tower, pretrained_vision_config
from vlstack.models.tokenizer import IMAGE, new_token_ids
from vlstack.models.vision import PositionTable, VisionTransformer
from vlstack.models.words import word_log_probs

PATCH_POSITION_STD = 1.0
"""Init scale of the patch position table added to the projected patch tokens. Tiny preset, held-out
shapes VQA, "what colour is the shape on the left/right?" in two-object scenes: 0.46 without the
table (demo run); 0.60-1.00 with it at unit scale (ten runs of 250-1200 general steps); one run at 0.1
reached 0.91, and at 0.02, the ViT's scale, there was no gain after 300 steps."""


@dataclass
class VLMOutput:
    """Everything the four pretraining losses need for a batch of matching pairs."""

    image_tokens: torch.Tensor  # [B, Nv, Dv] vision tower output (prompts first)
    image_embeds: torch.Tensor  # [B, E] L2-normalised ITC embedding
    text_hidden: torch.Tensor  # [B, T, Dt] LM last hidden states
    text_embeds: torch.Tensor  # [B, E] L2-normalised ITC embedding
    fused: torch.Tensor | None = None  # [B, Nv + T, W]
    itm_logits: torch.Tensor | None = None  # [B, 2]
    mlm_logits: torch.Tensor | None = None  # [B, T, V]
    vtm_pred: torch.Tensor | None = None  # [B, Nv, Dv]


class QwenImageModel(nn.Module):
    PARTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "vision": ("vision",),
        "projector": ("projector", "patch_position"),
        "fusion": ("fusion", "itc", "itm", "mlm", "vtm"),
        "language": ("language_model",),
    }
    """The parts a fine-tuning stage can freeze or train at its own rate -> their submodules (whose names
    are also the parameter-name prefixes). `fusion` is the fusion encoder with the pretraining heads (the
    generation path does not use them, so they never change in SFT anyway)."""

    def __init__(self, config: ModelConfig, seed: int = 0):
        """Build the model with weights drawn from `seed` (`vlstack.models.initialize`), or none under
        `build_empty`; `vision.pretrained_path` / `language.pretrained_path` load local checkpoints on top,
        and the config kept in `self.config` then describes their shape (with the paths cleared: the weights
        travel in vlstack's checkpoint from here on)."""
        super().__init__()
        language_model, language_cfg = build_language_model(config.language)
        tower_path = config.vision.pretrained_path
        vision_cfg = dataclasses.replace(pretrained_vision_config(config.vision) if tower_path else config.vision,
                                         pretrained_path=None)
        self.config = dataclasses.replace(config, vision=vision_cfg, language=language_cfg)
        v, t, f = vision_cfg.width, language_cfg.hidden_size, config.fusion.width
        self.vision = VisionTransformer(vision_cfg)
        self.language_model = language_model
        self.fusion = FusionTransformer(config.fusion, vision_width=v, text_width=t)
        self.itc = ITCHead(v, t, config.itc_dim, config.temperature_init)
        self.itm = ITMHead(f)
        self.mlm = MLMHead(f, t, language_cfg.vocab_size)
        self.vtm = MLP(f, f, out_dim=v)  # regresses vision features at fused visual positions
        self.projector = MLP(v, t, out_dim=t)  # LLaVA-1.5: vision tokens -> LM embeddings
        self.patch_position = (PositionTable(t, vision_cfg.image_size // vision_cfg.patch_size,
                                             init_std=PATCH_POSITION_STD) if config.patch_positions else None)
        if is_empty(self):
            return  # the weights come later, shard by shard (`init_weights` or a checkpoint's)
        init_weights(self, seed, skip=("language_model.",) if config.language.pretrained_path else ())
        if tower_path:
            load_pretrained_tower(self.vision, tower_path)

    # --- structure, for generic training code (train/, align/, models/parallelize.py) ---------

    def transformer_blocks(self) -> list[nn.Module]:
        """The repeated blocks of the vision tower, the language model and the fusion encoder: the units
        FSDP2 shards, activation checkpointing recomputes and torch.compile compiles."""
        return [*self.vision.blocks, *decoder(self.language_model).layers, *self.fusion.blocks]

    def fit_vocabulary(self, size: int, new_ids: list[int]) -> None:
        """Grow the LM's embeddings (and the MLM bias) to `size` tokens when they are fewer; the rows of
        `new_ids`, tokens the LM never learned, start at the mean of its learned rows."""
        lm = self.language_model
        if size > self.config.language.vocab_size:
            lm.resize_token_embeddings(size, mean_resizing=False)
            with torch.no_grad():
                self.mlm.bias = nn.Parameter(torch.cat([self.mlm.bias, self.mlm.bias.new_zeros(size - len(self.mlm.bias))]))
            language = language_config_from_hf(lm.config) if self.config.language.hf_config else \
                dataclasses.replace(self.config.language, vocab_size=size)
            self.config = dataclasses.replace(self.config, language=language)
        if not new_ids:
            return
        learned = min(new_ids)
        with torch.no_grad():
            for matrix in {lm.get_input_embeddings().weight, lm.get_output_embeddings().weight}:
                matrix[new_ids] = matrix[:learned].mean(dim=0)

    def part(self, name: str) -> list[nn.Module]:
        """The submodules of part `name` of `PARTS` (a model without patch positions lacks that one)."""
        return [module for attribute in self.PARTS[name] if (module := getattr(self, attribute)) is not None]

    # --- pretraining path ---------------------------------------------------------------

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> vision tokens [B, P + gh*gw, Dv]."""
        return self.vision(pixel_values)

    def image_embedding(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Vision tokens -> normalised ITC embedding [B, E] (pooled from the prompt tokens)."""
        return self.itc.embed_image(self.vision.pool(image_tokens))

    def summary_words(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Vision tokens [B, P + N, Dv] -> [B, V]: the mean of the LM's visual tokens that summarise the image
        (the projected summary tokens) read as a word (`models.words`), which word alignment trains to name it."""
        summary = self.projector(self.vision.summary_tokens(image_tokens)).mean(dim=1)  # [B, Dt]
        return word_log_probs(summary, self.language_model.get_input_embeddings().weight)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Right-padded ids [B, T] -> LM last hidden states [B, T, Dt]."""
        self._check_text(input_ids, attention_mask)
        return decoder(self.language_model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def text_embedding(self, text_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised ITC embedding [B, E] from the last real token (it has seen the whole text)."""
        last = attention_mask.long().sum(dim=1).clamp(min=1) - 1  # [B]
        pooled = text_hidden[torch.arange(text_hidden.shape[0], device=text_hidden.device), last]
        return self.itc.embed_text(pooled)

    def fuse(self, image_tokens: torch.Tensor, text_hidden: torch.Tensor, attention_mask: torch.Tensor,
             visual_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, Nv, Dv] + [B, T, Dt] -> fused [B, Nv + T, W]; `visual_mask` [B, Nv] hides visual tokens."""
        return self.fusion(image_tokens, text_hidden, attention_mask, visual_mask)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        fuse: bool = True,
    ) -> VLMOutput:
        """Encode matching (image, text) pairs; with `fuse`, also the ITM, MLM and VTM outputs."""
        image_tokens = self.encode_image(pixel_values)
        text_hidden = self.encode_text(input_ids, attention_mask)
        out = VLMOutput(
            image_tokens=image_tokens,
            image_embeds=self.image_embedding(image_tokens),
            text_hidden=text_hidden,
            text_embeds=self.text_embedding(text_hidden, attention_mask),
        )
        if fuse:
            n_visual = image_tokens.shape[1]
            out.fused = self.fuse(image_tokens, text_hidden, attention_mask)
            out.itm_logits = self.itm(out.fused)
            embedding = self.language_model.get_input_embeddings().weight
            out.mlm_logits = self.mlm(out.fused[:, n_visual:], embedding)
            out.vtm_pred = self.vtm(out.fused[:, :n_visual])
        return out

    # --- generation path ----------------------------------------------------------------

    def num_image_tokens(self, height: int | None = None, width: int | None = None) -> int:
        """How many `<image>` placeholder tokens one image of this size takes in the LM input."""
        cfg = self.config.vision
        gh, gw = self.vision.grid_for(height or cfg.image_size, width or cfg.image_size)
        return cfg.num_prompts + gh * gw

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N_img, C, H, W] -> visual tokens in the LM's embedding space [N_img, P + gh*gw, Dt].

        Each projected patch token gets a learned 2-D position: the LM's rotary positions only
        see the raster order of the patches, in which the left and right halves of the image
        interleave row by row (Qwen2-VL gives visual tokens 2-D rotary positions for the same reason).
        """
        tokens = self.projector(self.encode_image(pixel_values))
        if self.patch_position is None:
            return tokens
        grid = self.vision.grid_for(*pixel_values.shape[-2:])
        prompts = self.config.vision.num_prompts
        return torch.cat([tokens[:, :prompts], tokens[:, prompts:] + self.patch_position(grid)], dim=1)

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """LM input embeddings [B, T, Dt] with each image's projected tokens at its placeholders.

        `input_ids` must already hold `num_image_tokens()` copies of the `<image>` id per
        image, in the order of `pixel_values`.
        """
        image_id = self.config.image_token_id
        is_image = input_ids == image_id if image_id is not None else torch.zeros_like(input_ids, dtype=torch.bool)
        embeds = self.language_model.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        n_slots = int(is_image.sum())
        if pixel_values is None:
            if n_slots:
                raise InputError(f"the text has {n_slots} <image> placeholder tokens but no images were given")
            return embeds
        if image_id is None:
            raise InputError("this model has no image_token_id; build it with a tokenizer that has <image>")
        visual = self.image_features(pixel_values)  # [N_img, Nv, Dt]
        return splice_features(embeds, is_image, visual, "<image>", "image")

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        use_cache: bool = True,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> torch.Tensor:
        """Decode new tokens [B, <= max_new_tokens] after left-padded prompts (greedy or sampled)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self._check_text(input_ids, attention_mask, extra=max_new_tokens)
        sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k) if do_sample else {}
        gen_config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=do_sample, use_cache=use_cache,
            eos_token_id=eos_token_id, pad_token_id=pad_token_id if pad_token_id is not None else eos_token_id,
            **sampling,
        )
        embeds = self.embed_inputs(input_ids, pixel_values)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask,
                                            generation_config=gen_config)

    # --- checks -------------------------------------------------------------------------

    def _check_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, extra: int = 0) -> None:
        if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
            raise InputError(
                f"input_ids and attention_mask must both be [batch, length]; got {tuple(input_ids.shape)} "
                f"and {tuple(attention_mask.shape)}"
            )
        limit = self.config.language.max_positions
        if input_ids.shape[1] + extra > limit:
            raise InputError(
                f"text of {input_ids.shape[1]} tokens{f' + {extra} new' if extra else ''} exceeds the language "
                f"model's {limit} positions; truncate it or raise language.max_positions"
            )


def build_model(config: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0, empty: bool = False
                ) -> QwenImageModel:
    """A new model for `tokenizer`, with its `<image>` id, its weights drawn from `seed`. A pretrained LM
    (`language.pretrained_path`) must share the tokenizer's ids (`new_token_ids`); its embeddings grow to the
    tokenizer, vlstack's added tokens starting at the mean embedding. A tokenizer larger than a fresh LM's
    `vocab_size` is a ConfigError.

    `empty`: parameters on the meta device, to be sharded and then filled with `init_weights(model, seed)`
    (the same numbers); a model with pretrained parts is built whole all the same (their weights are read now)."""
    config = dataclasses.replace(config, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE))
    language_dir = config.language.pretrained_path
    if language_dir is None and len(tokenizer) > config.language.vocab_size:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens, more than language.vocab_size = "
                          f"{config.language.vocab_size}; raise language.vocab_size or use a smaller tokenizer")
    pretrained = language_dir is not None or config.vision.pretrained_path is not None
    model = build_empty(lambda: QwenImageModel(config, seed)) if empty and not pretrained else QwenImageModel(config, seed)
    vocab = model.config.language.vocab_size
    new_ids = (new_token_ids(tokenizer, language_dir) or list(range(vocab, len(tokenizer)))) if language_dir else []
    model.fit_vocabulary(len(tokenizer), new_ids)
    return model


def splice_features(embeds: torch.Tensor, slots: torch.Tensor, features: torch.Tensor, placeholder: str,
                    what: str) -> torch.Tensor:
    """Put `features` [N, M, Dt] (N inputs of M tokens each, in order) into `embeds` [B, T, Dt] where
    the bool mask `slots` [B, T] marks the `placeholder` tokens; any modality splices this way."""
    n_slots = int(slots.sum())
    if n_slots != features.shape[0] * features.shape[1]:
        raise InputError(
            f"{features.shape[0]} {what}(s) need {features.shape[0]} x {features.shape[1]} {placeholder} tokens, "
            f"the text has {n_slots}; expand each {placeholder} placeholder with expand_image_placeholders() "
            "before tokenising"
        )
    return embeds.masked_scatter(slots[..., None], features.to(embeds.dtype))


def count_parameters(config: ModelConfig) -> dict[str, int]:
    """Parameters per component, counted on the meta device (no memory is allocated).

    `fusion` counts every cross-modal parameter: fusion encoder, projector and heads.
    """
    with torch.device("meta"):
        model = QwenImageModel(config)
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.vision.parameters())
    language = sum(p.numel() for p in model.language_model.parameters())
    return {"vision": vision, "language": language, "fusion": total - vision - language, "total": total}
