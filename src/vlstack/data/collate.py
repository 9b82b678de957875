"""Turning images and texts into model-ready tensors.

Images are resized and normalised with the seed's mean/std at load time (shards
keep the encoded images); texts are tokenised, right-padded, and checked against
the model's length limit so an over-long sample is reported, not silently cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from transformers import PreTrainedTokenizerBase

from vlstack.errors import DataError

IMAGE_MEAN = (0.481, 0.457, 0.408)
IMAGE_STD = (0.268, 0.261, 0.275)


def image_to_tensor(
    image: Image.Image,
    size: int,
    mean: Sequence[float] = IMAGE_MEAN,
    std: Sequence[float] = IMAGE_STD,
) -> torch.Tensor:
    """PIL image -> normalised float tensor [3, size, size]."""
    tensor = TF.to_image(image.convert("RGB"))  # uint8 [3, H, W]
    tensor = TF.resize(tensor, [size, size], antialias=True)
    tensor = TF.to_dtype(tensor, torch.float32, scale=True)
    return TF.normalize(tensor, list(mean), list(std))


@dataclass
class TextBatch:
    input_ids: torch.Tensor  # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T]


def tokenize_texts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, truncate: bool = False
) -> TextBatch:
    """Tokenise and right-pad `texts`, ending each with EOS; a text over `max_length` is a DataError,
    unless `truncate` (for scoring, where the first tokens are enough) cuts it to fit."""
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    keep = max_length - 1 if truncate else None
    ids = [seq[:keep] + [tokenizer.eos_token_id] for seq in ids]
    too_long = [i for i, seq in enumerate(ids) if len(seq) > max_length]
    if too_long:
        first = too_long[0]
        raise DataError(
            f"text {first} is {len(ids[first])} tokens, over the limit of {max_length} "
            f"({len(too_long)} text(s) too long): {texts[first][:60]!r}..."
        )
    width = max(len(seq) for seq in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        attention_mask[row, : len(seq)] = 1
    return TextBatch(input_ids, attention_mask)
