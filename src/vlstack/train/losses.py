"""Pretraining losses. Each takes model outputs and returns a scalar tensor."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_LOGIT_SCALE = math.log(100.0)
"""CLIP's clamp: the temperature never drops below 0.01, which keeps the logits finite."""


def itc_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching pairs (row i of each is a pair).

    image_embeds, text_embeds: [B, E], L2-normalised; logit_scale: log(1 / temperature).
    """
    scale = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * image_embeds @ text_embeds.t()  # [B, B]
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
