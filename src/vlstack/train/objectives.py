"""Objectives: `loss(model, batch) -> (loss, metrics)`, the only thing the Trainer calls."""

from __future__ import annotations

import torch

from vlstack.models.vlm import QwenImageModel
from vlstack.train.losses import itc_loss


def itc_objective(model: QwenImageModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Image-text contrastive learning on matching pairs (no fusion pass needed)."""
    out = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], fuse=False)
    loss = itc_loss(out.image_embeds, out.text_embeds, model.itc.logit_scale)
    return loss, {"itc": loss.item(), "temperature": model.itc.temperature.item()}
