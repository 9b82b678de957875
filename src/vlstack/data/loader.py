"""Deterministic, resumable loading that does not depend on the number of ranks.

`GlobalBatches` draws *global* batches from an in-memory dataset: epoch e visits
the samples in the order of a permutation seeded by (seed, e), and each rank
takes its slice of every global batch. The position is "samples consumed", so a
run resumed on a different number of ranks continues with exactly the samples it
would have seen.

Over shard directories (`vlstack data clean` output): `ShardDataset` is
map-style (random access by index through the tars' member offsets, for any
sampler, `GlobalBatches`-style included), and `ShardStream` streams the shards
in a seeded order per epoch with a resumable position (`state_dict`). Batch
either with `vlstack.data.collate.SampleCollator`.
"""

from __future__ import annotations

import io
import json
import logging
import random
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset
from transformers import PreTrainedTokenizerBase

from vlstack.data.collate import image_to_tensor, tokenize_texts
from vlstack.data.schema import Rejected, Sample
from vlstack.data.shards import read_manifest, read_shard, read_shards
from vlstack.errors import ConfigError, DataError
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


class ShardDataset(Dataset):
    """Map-style dataset over a shard directory: `dataset[i]` is the i-th sample in manifest order.

    Opening indexes each tar's member offsets (headers only, no image bytes), so
    `__getitem__` reads just one sample's members. A shard that cannot be indexed
    is skipped with a logged warning; its ids are not in the dataset.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._index: list[tuple[str, dict[str, tuple[int, int]]]] = []  # (shard path, suffix -> (offset, size))
        for info in read_manifest(self.directory):
            path = self.directory / info.shard
            try:
                self._index.extend(_member_offsets(path))
            except (tarfile.TarError, OSError) as error:
                logger.warning("skipping shard %s: %s", path, error)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> Sample:
        path, members = self._index[index]
        with open(path, "rb") as file:
            files = {}
            for suffix, (offset, size) in members.items():
                file.seek(offset)
                files[suffix] = file.read(size)
        return Sample.from_dict(json.loads(files.pop("json")), files)


def _member_offsets(path: Path) -> Iterator[tuple[str, dict[str, tuple[int, int]]]]:
    """(path, {suffix: (data offset, size)}) per sample key of a tar, in archive order."""
    groups: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if member.isfile():
                key, _, suffix = member.name.partition(".")
                groups.setdefault(key, {})[suffix] = (member.offset_data, member.size)
    for members in groups.values():
        if "json" in members:
            yield str(path), members


class ShardStream(IterableDataset):
    """Streaming dataset over a shard directory with a resumable position.

    Epoch e reads the shards in an order shuffled by (seed, e) (`shuffle=False`:
    manifest order) and yields their samples; unreadable samples are skipped
    with a logged reason. `state_dict()` is the position after the last sample
    yielded; `load_state_dict` continues from there without reading the shards
    it had finished. The position is that of
    this iterator, so iterate it in the process that checkpoints (DataLoader
    `num_workers=0`), or give each rank its own stream.
    """

    def __init__(self, directory: str | Path, seed: int = 0, shuffle: bool = True, epochs: int | None = 1):
        self.directory = Path(directory)
        self.shards = read_manifest(self.directory)
        self.seed, self.shuffle, self.epochs = seed, shuffle, epochs
        self.epoch = 0
        self.shard_position = 0  # shards of this epoch's order fully consumed
        self.sample_position = 0  # samples yielded from the current shard

    def __iter__(self) -> Iterator[Sample]:
        while self.epochs is None or self.epoch < self.epochs:
            order = self._order(self.epoch)
            while self.shard_position < len(order):
                info = self.shards[order[self.shard_position]]
                items = read_shard(self.directory / info.shard, info.ids)
                for position, item in enumerate(items):
                    if position < self.sample_position:
                        continue
                    self.sample_position = position + 1
                    if isinstance(item, Rejected):
                        logger.warning("skipping %s in %s: %s (%s)", item.id, item.source, item.reason, item.detail)
                        continue
                    yield item
                self.shard_position, self.sample_position = self.shard_position + 1, 0
            self.epoch, self.shard_position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "shard_position": self.shard_position, "sample_position": self.sample_position,
                "seed": self.seed, "shuffle": self.shuffle, "shards": [info.shard for info in self.shards]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["shards"] != [info.shard for info in self.shards]:
            raise DataError(f"the saved stream position is for other shards than {self.directory} holds; "
                            "resume with the same shard directory")
        self.seed, self.shuffle = state["seed"], state["shuffle"]
        self.epoch, self.shard_position, self.sample_position = (
            state["epoch"], state["shard_position"], state["sample_position"])

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.shards)))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order
