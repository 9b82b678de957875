"""Deterministic, resumable batching that does not depend on the number of ranks.

The sampler draws *global* batches: epoch e visits the samples in the order of a
permutation seeded by (seed, e), and each rank takes its slice of every global
batch. The position is "samples consumed", so a run resumed on a different number
of ranks continues with exactly the samples it would have seen.
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from vlstack.data.collate import image_to_tensor, tokenize_texts
from vlstack.errors import ConfigError
from vlstack.progress import progress_bar

Batch = dict[str, torch.Tensor]


def pairs_to_tensors(images: Sequence[Image.Image], texts: Sequence[str], tokenizer: PreTrainedTokenizerBase,
                     image_size: int, max_text_tokens: int, description: str = "encode pairs") -> Batch:
    """Image-text pairs -> an in-memory dataset: pixel_values [N, 3, S, S], input_ids / attention_mask [N, T]."""
    pixels = []
    with progress_bar(transient=True) as progress:
        for image in progress.track(images, description=description):
            pixels.append(image_to_tensor(image, image_size))
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
