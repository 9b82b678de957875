"""Heads for the pretraining objectives: ITC, ITM and MLM.

The VTM head and the LLaVA projector are plain two-layer MLPs (`layers.MLP`), built in `vlm.py`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ITCHead(nn.Module):
    """Image-text contrastive: projections into a shared space and a learnable temperature."""

    def __init__(self, vision_width: int, text_width: int, dim: int, temperature_init: float):
        super().__init__()
        self.image_proj = nn.Linear(vision_width, dim)
        self.text_proj = nn.Linear(text_width, dim)
        self.temperature_init = temperature_init
        # a 1-element vector, not a scalar: FSDP2 cannot shard 0-d parameters
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1.0 / temperature_init)]))

    def embed_image(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(pooled), dim=-1)  # [B, E]

    def embed_text(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(pooled), dim=-1)  # [B, E]

    @property
    def temperature(self) -> torch.Tensor:
        return self.logit_scale.exp().reciprocal()


class ITMHead(nn.Module):
    """Image-text matching: match / no-match logits from the fused first token."""

    def __init__(self, width: int):
        super().__init__()
        self.classifier = nn.Linear(width, 2)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.classifier(fused[:, 0])  # [B, 2]


class MLMHead(nn.Module):
    """Masked language modelling on fused text positions.

    As BERT's prediction head: a transform to the LM's width, then a decoder tied to
    the LM's input embeddings (passed in at call time, so the weights are shared).
    """

    def __init__(self, width: int, text_width: int, vocab_size: int):
        super().__init__()
        self.transform = nn.Linear(width, text_width)
        self.norm = nn.LayerNorm(text_width)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, fused_text: torch.Tensor, embedding_weight: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.transform(fused_text)))  # [B, T, Dt]
        return F.linear(h, embedding_weight, self.bias)  # [B, T, V]
