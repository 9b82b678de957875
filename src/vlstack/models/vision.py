"""The vision tower: a ViT with dynamic position embedding, hierarchical attention and prompts.

Input images of any size are cut into `patch_size` patches; the learned position
table is interpolated to the patch grid, so a model built for 384 px also runs at
224 or 448 px. Learnable visual prompt tokens are prepended, and their outputs
are the pooled image representation used for contrastive learning.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlstack.errors import ConfigError, InputError
from vlstack.models.config import VisionConfig
from vlstack.models.layers import Block, SelfAttention


class PatchEmbed(nn.Module):
    """Patch embedding: [B, C, H, W] -> [B, gh*gw, D] and the grid (gh, gw). `stem="patch"`: one
    non-overlapping convolution; `"conv"`: `conv_stem` down to the same grid."""

    def __init__(self, in_channels: int, width: int, patch_size: int, bias: bool = True, stem: str = "patch"):
        super().__init__()
        self.patch_size = patch_size
        self.proj = (conv_stem(in_channels, width, patch_size) if stem == "conv"
                     else nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size, bias=bias))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(pixels)  # [B, D, gh, gw]
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid  # [B, gh*gw, D]


def conv_stem(in_channels: int, width: int, patch_size: int) -> nn.Sequential:
    """log2(patch_size) 3x3 stride-2 convolutions, each with BatchNorm and ReLU, widening to `width` (a quarter
    of it first, doubling up), then a 1x1 convolution: the patch grid of a `patch_size` patchify stem."""
    steps = patch_size.bit_length() - 1
    if patch_size < 2 or 1 << steps != patch_size:
        raise ConfigError(f"vision.stem=conv needs a power-of-two patch_size (2, 4, 8, 16, ...), got {patch_size}")
    widths = [max(width >> (steps - 1 - i), 8) if i < steps - 1 else width for i in range(steps)]
    layers: list[nn.Module] = []
    for channels_in, channels_out in zip([in_channels, *widths], widths):
        conv = nn.Conv2d(channels_in, channels_out, 3, stride=2, padding=1, bias=False)
        conv.init_std = math.sqrt(2 / (channels_in * 9))  # He init, as ReLU nets start (`models.initialize`)
        layers += [conv, nn.BatchNorm2d(channels_out), nn.ReLU()]
    last = nn.Conv2d(width, width, 1)
    last.init_std = math.sqrt(1 / width)
    return nn.Sequential(*layers, last)


class PositionTable(nn.Module):
    """A learned position table for a `grid`×`grid` patch grid; for another grid it is resized
    with 2-D bicubic interpolation, so a model built for one image size runs at others."""

    def __init__(self, width: int, grid: int, init_std: float = 0.02):
        super().__init__()
        self.grid = grid
        self.init_std = init_std  # `vlstack.models.initialize` draws the table with it
        self.table = nn.Parameter(torch.zeros(1, grid * grid, width))

    def forward(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Position embeddings for a patch grid of (gh, gw): [1, gh*gw, D]."""
        if grid_hw == (self.grid, self.grid):
            return self.table
        width = self.table.shape[-1]
        square = self.table.reshape(1, self.grid, self.grid, width).permute(0, 3, 1, 2)  # [1, D, g, g]
        resized = F.interpolate(square, size=grid_hw, mode="bicubic", align_corners=False)
        return resized.permute(0, 2, 3, 1).reshape(1, grid_hw[0] * grid_hw[1], width)


class DynamicPositionEmbedding(PositionTable):
    """The position table refined by a Conv1d along the sequence (the article's section 1.2)."""

    def __init__(self, width: int, grid: int):
        super().__init__(width, grid)
        self.conv = nn.Conv1d(width, width, kernel_size=3, padding=1)

    def forward(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        table = super().forward(grid_hw)  # [1, gh*gw, D]
        return self.conv(table.transpose(1, 2)).transpose(1, 2)

    def reset_conv_to_identity(self) -> None:
        """Make the conv pass the table through unchanged: a pretrained tower's positions stay its own."""
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :, 1].copy_(torch.eye(self.conv.weight.shape[0]))
            self.conv.bias.zero_()


class GlobalAttention(SelfAttention):
    """Full self-attention over prompts and patches (ignores the patch grid)."""

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)


class HierarchicalAttention(nn.Module):
    """Window attention over non-overlapping `window_size`² patch windows, then global attention.

    As the article's HierarchicalAttention, but on token sequences: the patch grid is
    partitioned into windows (padded at the bottom/right with masked tokens when it
    does not divide evenly), attention runs inside each window, and a global
    attention over all tokens follows. A residual connection wraps the window stage
    so prompt tokens, which belong to no window, stay on the same scale as patches.
    """

    def __init__(self, width: int, heads: int, window_size: int, num_prompts: int):
        super().__init__()
        self.window_size = window_size
        self.num_prompts = num_prompts
        self.window_attn = SelfAttention(width, heads)
        self.global_attn = SelfAttention(width, heads)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """x: [B, P + gh*gw, D] with P prompt tokens first."""
        prompts, patches = x[:, : self.num_prompts], x[:, self.num_prompts :]
        patches = patches + self.window_stage(patches, grid)
        return self.global_attn(torch.cat([prompts, patches], dim=1))

    def window_stage(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Attention inside each window. patches: [B, gh*gw, D] -> [B, gh*gw, D]."""
        B, _, D = patches.shape
        gh, gw = grid
        ws = self.window_size
        pad_h, pad_w = (-gh) % ws, (-gw) % ws
        x = patches.reshape(B, gh, gw, D)
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # [B, Hp, Wp, D]
        Hp, Wp = gh + pad_h, gw + pad_w
        windows = _partition(x, ws)  # [B*nW, ws*ws, D]
        mask = None
        if pad_h or pad_w:
            valid = torch.zeros(1, Hp, Wp, 1, dtype=torch.bool, device=x.device)
            valid[:, :gh, :gw] = True
            valid = _partition(valid, ws).expand(B, -1, -1, -1).reshape(-1, ws * ws)  # [B*nW, ws*ws]
            mask = valid[:, None, None, :]  # [B*nW, 1, 1, ws*ws]
        out = self.window_attn(windows, attn_mask=mask)  # [B*nW, ws*ws, D]
        out = _unpartition(out, ws, B, Hp, Wp)  # [B, Hp, Wp, D]
        return out[:, :gh, :gw].reshape(B, gh * gw, D)


def _partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """[B, H, W, D] -> [B * (H/ws) * (W/ws), ws*ws, D], windows in row-major order."""
    B, H, W, D = x.shape
    x = x.reshape(B, H // ws, ws, W // ws, ws, D).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, D)


def _unpartition(windows: torch.Tensor, ws: int, B: int, H: int, W: int) -> torch.Tensor:
    """Inverse of `_partition`: [B*nW, ws*ws, D] -> [B, H, W, D]."""
    D = windows.shape[-1]
    x = windows.reshape(B, H // ws, W // ws, ws, ws, D).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, D)


class VisionTransformer(nn.Module):
    """Images [B, C, H, W] -> tokens [B, P + gh*gw, D] (P prompt tokens first, then patches)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.in_channels, cfg.width, cfg.patch_size, bias=cfg.patch_bias, stem=cfg.stem)
        self.pos_embed = DynamicPositionEmbedding(cfg.width, cfg.image_size // cfg.patch_size)
        self.prompts = nn.Parameter(torch.zeros(1, cfg.num_prompts, cfg.width))
        self.pre_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.mlp_ratio, cfg.norm_eps, self._attention(i), cfg.activation)
                                    for i in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps) if cfg.final_norm else nn.Identity()

    def _attention(self, index: int) -> nn.Module:
        cfg = self.cfg
        if self.is_global(index):
            return GlobalAttention(cfg.width, cfg.heads)
        return HierarchicalAttention(cfg.width, cfg.heads, cfg.window_size, cfg.num_prompts)

    def is_global(self, index: int) -> bool:
        every = self.cfg.global_every
        return every > 0 and (index + 1) % every == 0

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        return height // self.cfg.patch_size, width // self.cfg.patch_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self._check_pixels(pixel_values)
        x, grid = self.patch_embed(pixel_values)  # [B, gh*gw, D]
        x = x + self.pos_embed(grid)
        prompts = self.prompts.expand(x.shape[0], -1, -1)  # [B, P, D]
        x = self.pre_norm(torch.cat([prompts, x], dim=1))  # [B, P + gh*gw, D]
        for block in self.blocks:
            x = block(x, grid=grid)
        return self.norm(x)

    def summary_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The tokens that summarise the image: the prompt outputs (the patches for a tower without prompts).
        [B, P + N, D] -> [B, P or N, D]."""
        prompts = self.cfg.num_prompts
        return tokens[:, :prompts] if prompts else tokens

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The image representation: the mean of the summary tokens. [B, P + N, D] -> [B, D]."""
        return self.summary_tokens(tokens).mean(dim=1)

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        cfg = self.cfg
        if pixels.ndim != 4 or pixels.shape[1] != cfg.in_channels:
            raise InputError(
                f"images must be a float tensor [batch, {cfg.in_channels}, height, width]; got shape "
                f"{tuple(pixels.shape)}. Convert grayscale or RGBA images to RGB and stack them into a batch."
            )
        if not pixels.is_floating_point():
            raise InputError(f"images must be floating point (normalised pixels), got {pixels.dtype}")
        if min(pixels.shape[-2:]) < cfg.patch_size:
            raise InputError(
                f"image of {pixels.shape[-2]}x{pixels.shape[-1]} px is smaller than one {cfg.patch_size} px patch; "
                f"resize it to at least {cfg.patch_size} px (the model was built for {cfg.image_size} px)"
            )
