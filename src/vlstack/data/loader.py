"""In-memory datasets: held-out pairs as tensors, and deterministic, resumable batches over them.

`GlobalBatches` draws *global* batches from an in-memory dataset: epoch e visits
the samples in the order of a permutation seeded by (seed, e), and each rank
takes its slice of every global batch. The position is "samples consumed", so a
run resumed on a different number of ranks continues with exactly the samples it
would have seen. Training sets that live in shard directories stream instead
(`vlstack.data.stream`).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from vlstack.data.collate import image_to_tensor, tokenize_texts
from vlstack.data.schema import Rejected
from vlstack.data.shards import read_shards
from vlstack.errors import ConfigError, DataError
from vlstack.models.config import VisionConfig
from vlstack.progress import progress_bar

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


def caption_pairs(directory: str | Path) -> tuple[list[Image.Image], list[str], dict[str, int]]:
    """The (first image, text) pairs of the samples in a shard directory, in manifest order, and the count
    of samples left out by reason (unreadable, no image, no text, undecodable image); each is logged."""
    images, texts, skipped = [], [], {}

    def skip(sample_id: str | None, reason: str, detail: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1
        logger.warning("left out of the pairs of %s: %s (%s: %s)", directory, sample_id, reason, detail)

    for item in read_shards(directory):
        if isinstance(item, Rejected):
            skip(item.id, item.reason, item.detail)
        elif not item.images or not item.text:
            skip(item.id, "not_a_pair", "a pretraining pair needs an image and a text")
        else:
            try:
                image = Image.open(io.BytesIO(item.images[0].data))
                image.load()
            except Exception as error:  # decoders raise many types on bad bytes
                skip(item.id, "undecodable_image", f"{type(error).__name__}: {error}")
                continue
            images.append(image.convert("RGB"))
            texts.append(item.text)
    if not images:
        raise DataError(f"{directory} holds no image-text pairs (left out: {skipped or 'none'}); pass a shard "
                        "directory of captioned images (`vlstack data synth --kind caption` writes one)")
    return images, texts, skipped


def pairs_to_tensors(images: Sequence[Image.Image], texts: Sequence[str], tokenizer: PreTrainedTokenizerBase,
                     vision: VisionConfig, max_text_tokens: int, description: str = "encode pairs") -> Batch:
    """Image-text pairs -> an in-memory dataset: pixel_values [N, 3, S, S], input_ids / attention_mask [N, T]."""
    pixels = []
    with progress_bar(transient=True) as progress:
        for image in progress.track(images, description=description):
            pixels.append(image_to_tensor(image, vision))
    text = tokenize_texts(tokenizer, texts, max_text_tokens)
    return {"pixel_values": torch.stack(pixels), "input_ids": text.input_ids, "attention_mask": text.attention_mask}


class GlobalBatches:
    """Endless shuffled epochs over an in-memory dataset of equal-length tensors."""

    def __init__(self, data: Batch, global_batch: int, seed: int = 0):
        self.data = data
        self.size = len(next(iter(data.values())))
        if global_batch > self.size:
            raise ConfigError(f"the global batch ({global_batch}) is larger than the dataset ({self.size} samples)")
        self.global_batch = global_batch
        self.seed = seed
        self.epoch = 0
        self.cursor = 0  # samples of the current epoch already consumed
        self._order = self._permutation(0)

    def next(self, rank: int = 0, world: int = 1) -> Batch:
        """This rank's slice of the next global batch (an epoch's tail shorter than a batch is dropped)."""
        if self.global_batch % world:
            raise ConfigError(f"the global batch ({self.global_batch}) does not split evenly over {world} ranks")
        if self.cursor + self.global_batch > self.size:
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        local = self.global_batch // world
        start = self.cursor + rank * local
        index = self._order[start : start + local]
        self.cursor += self.global_batch
        return {key: value[index] for key, value in self.data.items()}

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.cursor = state["seed"], state["epoch"], state["cursor"]
        self._order = self._permutation(self.epoch)

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.size, generator=generator)
