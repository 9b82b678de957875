"""Cross-modal fusion: a bidirectional transformer over [visual tokens ; text tokens]."""

from __future__ import annotations

import torch
from torch import nn

from vlstack.models.config import FusionConfig
from vlstack.models.layers import Block, SelfAttention


class FusionTransformer(nn.Module):
    """Projects both modalities to a common width, tags them with a modality embedding,
    and lets every token attend to every (non-padding) token of both.

    The article concatenates 1024-wide visual and 4096-wide text features into a
    2048-wide encoder with no projection; here each stream has its own projection.
    """

    def __init__(self, cfg: FusionConfig, vision_width: int, text_width: int):
        super().__init__()
        self.visual_proj = nn.Linear(vision_width, cfg.width)
        self.text_proj = nn.Linear(text_width, cfg.width)
        self.modality = nn.Embedding(2, cfg.width)  # 0 = image, 1 = text
        # stands in for masked visual tokens; visual token modelling predicts what they were
        self.mask_embedding = nn.Parameter(torch.zeros(cfg.width))
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.mlp_ratio, cfg.norm_eps, SelfAttention(cfg.width, cfg.heads))
            for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)

    def forward(self, visual: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                visual_mask: torch.Tensor | None = None) -> torch.Tensor:
        """visual: [B, Nv, Dv]; text: [B, T, Dt]; text_mask: [B, T] (1 = real token) -> [B, Nv + T, W].

        visual_mask: optional bool [B, Nv]; True replaces that visual token with the mask embedding.
        """
        v = self.visual_proj(visual)
        if visual_mask is not None:
            v = torch.where(visual_mask[..., None], self.mask_embedding.to(v.dtype), v)
        v = v + self.modality.weight[0]
        t = self.text_proj(text) + self.modality.weight[1]
        x = torch.cat([v, t], dim=1)  # [B, Nv + T, W]
        visual_mask = torch.ones(visual.shape[:2], dtype=torch.bool, device=visual.device)
        keys = torch.cat([visual_mask, text_mask.bool()], dim=1)  # [B, Nv + T]
        attn_mask = keys[:, None, None, :]  # [B, 1, 1, Nv + T]
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask)
        return self.norm(x)
