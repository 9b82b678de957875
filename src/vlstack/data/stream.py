"""Streaming batches from shard directories: a resumable order that no number of ranks changes.

The order. Each source (a shard directory, `vlstack data ingest` or `data clean`
output) has, per epoch, an order computed from its manifest alone: its shards
shuffled by (seed, source, epoch), then the samples of each block of
`shuffle_shards` consecutive shards shuffled together (a shuffle buffer of that
block, known without reading a byte). Global batches are filled slot by slot:
a slot's source is drawn with probability weight / sum(weights) (seeded by the
seed and the batch number), and the slot takes that source's next sample. A
source that runs out starts its next epoch in a new order, so each source
repeats at its own pace and a run's length is its number of steps. Rank r of
w takes slots [r * B / w, (r + 1) * B / w) of every global batch.

The position: global batches drawn, and each source's epoch and cursor. That is
the whole state, so a run resumed on any number of ranks continues the same
global sequence: within an epoch no sample repeats and none is skipped.

The work: DataLoader workers read each sample's tar members (through an index
of member offsets, built on a shard's first use), then `encode` (decode,
augment, tokenize) and `collate` it. A sample that cannot train (a damaged
shard, an undecodable image, too many tokens) is left out of its batch with a
reason, and `finished_epochs` accounts for every sample of an epoch: skipped
by reason, or trained. Memory holds the manifests' counts and one epoch order per
source (8 bytes a sample), never the samples.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import tarfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vlstack.collectives import gather_objects
from vlstack.data.schema import Sample
from vlstack.data.shards import read_manifest
from vlstack.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
Slot = tuple[int, int, int, int]
"""(source, epoch, shard, position in the shard): one sample of one epoch."""


@dataclass
class StreamSource:
    """One shard directory in a mix."""

    path: str
    weight: float = 1.0
    """Relative sampling probability: a batch slot comes from this source with probability weight / total."""
    samples: int | None = None
    """Use only the first `samples` samples, in manifest order (None: all)."""


@dataclass
class StreamConfig:
    """How batches stream from shards."""

    workers: int = 2
    """DataLoader worker processes that read, decode, augment and collate (0: in the training process)."""
    shuffle_shards: int = 4
    """Consecutive shards (in the epoch's shuffled shard order) whose samples are shuffled together."""
    prefetch_batches: int = 2
    """Batches each worker prepares ahead."""


class Skip(Exception):
    """Raised by an `encode` function: this sample cannot train (`reason` is a short code)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)  # the args, so it pickles back from a worker
        self.reason, self.detail = reason, detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


Encode = Callable[[Sample, random.Random], Any]
"""A sample -> what `collate` batches; raises `Skip`. Gets a generator seeded by the sample's slot."""
Collate = Callable[[list[Any]], Batch]


class SourceIndex:
    """A shard directory as the order sees it: shard files and their sample counts, from the manifest."""

    def __init__(self, path: str | Path, samples: int | None = None):
        self.path = Path(path)
        shards = read_manifest(self.path) if (self.path / "manifest.jsonl").is_file() else None
        if not shards or not any(info.count for info in shards):
            raise DataError(f"{self.path} holds no shard manifest with samples; point the source at the output of "
                            "`vlstack data ingest` or `vlstack data clean`")
        counts = np.array([info.count for info in shards], dtype=np.int64)
        if samples is not None:  # the first `samples`: whole shards, then part of one
            counts = np.clip(samples - np.concatenate([[0], np.cumsum(counts)[:-1]]), 0, counts)
            shards = [info for info, count in zip(shards, counts) if count]
            counts = counts[counts > 0]
        self.shards = [info.shard for info in shards]
        self.ids = [info.ids for info in shards]
        self.counts = counts
        self.starts = np.concatenate([[0], np.cumsum(self.counts)])  # sample number where each shard begins

    def __len__(self) -> int:
        return int(self.starts[-1])

    def order(self, seed: int, source: int, epoch: int, shuffle_shards: int) -> np.ndarray:
        """Sample numbers of one epoch in their order [N]."""
        rng = np.random.default_rng([seed, source, epoch])
        shard_order = rng.permutation(len(self.shards))
        pieces = []
        for begin in range(0, len(shard_order), shuffle_shards):
            block = np.concatenate([np.arange(self.starts[s], self.starts[s + 1]) for s in shard_order[begin:
                                    begin + shuffle_shards]])
            pieces.append(rng.permutation(block))
        return np.concatenate(pieces)

    def locate(self, number: int) -> tuple[int, int]:
        """(shard, position) of sample number `number`."""
        shard = int(np.searchsorted(self.starts, number, side="right")) - 1
        return shard, int(number - self.starts[shard])


class StreamPlan:
    """Which sample fills each slot of each global batch (see the module doc); its state is the position."""

    def __init__(self, sources: list[StreamSource], global_batch: int, seed: int = 0, shuffle_shards: int = 4):
        if not sources:
            raise ConfigError("a stream needs at least one source: data.sources: [{path: DIR, weight: 1.0}]")
        weights = np.array([s.weight for s in sources], dtype=np.float64)
        if (weights <= 0).any() or not np.isfinite(weights).all():
            raise ConfigError(f"source weights must be positive, got {weights.tolist()}")
        if shuffle_shards < 1:
            raise ConfigError(f"shuffle_shards must be at least 1, got {shuffle_shards}")
        self.sources = [SourceIndex(s.path, s.samples) for s in sources]
        self.probabilities = weights / weights.sum()
        self.global_batch, self.seed, self.shuffle_shards = global_batch, seed, shuffle_shards
        self.batches = 0
        self.epochs = [0] * len(sources)
        self.cursors = [0] * len(sources)
        self._orders: dict[int, tuple[int, np.ndarray]] = {}  # source -> (epoch, order)

    def next_batch(self) -> list[Slot]:
        """The slots of the next global batch, advancing the position."""
        picks = np.random.default_rng([self.seed, 1_000_003, self.batches]).choice(
            len(self.sources), size=self.global_batch, p=self.probabilities)
        slots = [self._take(int(source)) for source in picks]
        self.batches += 1
        return slots

    def _take(self, source: int) -> Slot:
        index = self.sources[source]
        if self.cursors[source] == len(index):
            self.epochs[source], self.cursors[source] = self.epochs[source] + 1, 0
        epoch = self.epochs[source]
        if self._orders.get(source, (None,))[0] != epoch:
            self._orders[source] = (epoch, index.order(self.seed, source, epoch, self.shuffle_shards))
        number = int(self._orders[source][1][self.cursors[source]])
        self.cursors[source] += 1
        return (source, epoch, *index.locate(number))

    def epoch_done(self, source: int, epoch: int) -> bool:
        """Every sample of `epoch` of `source` has been drawn."""
        return self.epochs[source] > epoch or self.cursors[source] == len(self.sources[source]) and \
            self.epochs[source] == epoch

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "epochs": list(self.epochs), "cursors": list(self.cursors),
                "seed": self.seed, "sources": [[str(s.path), s.shards] for s in self.sources]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["sources"] != [[str(s.path), s.shards] for s in self.sources]:
            raise DataError("the saved data position is for other sources or shards than this run's; resume with "
                            "the same data.sources (the same shard directories, unchanged)")
        self.batches, self.seed = state["batches"], state["seed"]
        self.epochs, self.cursors = list(state["epochs"]), list(state["cursors"])


class SampleReader(Dataset):
    """Map-style dataset over slots: reads one sample's members and `encode`s it (in a DataLoader worker).

    Returns `(slot, encoded)` or `(slot, Skip)`. Each process caches the member index of the
    shards it read last."""

    def __init__(self, directories: list[Path], encode: Encode, seed: int, cached_shards: int = 8):
        self.directories, self.encode, self.seed = directories, encode, seed
        self.cached_shards = cached_shards
        self._index: OrderedDict[Path, list[dict[str, tuple[int, int]]] | Skip] = OrderedDict()
        self._shards: dict[int, list[str]] = {}

    def __getitem__(self, slot: Slot) -> tuple[Slot, Any]:
        source, epoch, shard, position = slot
        try:
            members = self._members(source, shard)
            if isinstance(members, Skip):
                raise members
            if position >= len(members):
                raise Skip("lost_in_shard", f"the shard holds {len(members)} readable samples; this is number "
                                            f"{position}")
            sample = _read_sample(self._path(source, shard), members[position])
            rng = random.Random(f"{self.seed}:{source}:{epoch}:{shard}:{position}")
            return slot, self.encode(sample, rng)
        except Skip as skip:
            return slot, skip

    def _path(self, source: int, shard: int) -> Path:
        if source not in self._shards:
            self._shards[source] = [info.shard for info in read_manifest(self.directories[source])]
        return self.directories[source] / self._shards[source][shard]

    def _members(self, source: int, shard: int) -> list[dict[str, tuple[int, int]]] | Skip:
        path = self._path(source, shard)
        if path not in self._index:
            self._index[path] = _member_index(path)
            while len(self._index) > self.cached_shards:
                self._index.popitem(last=False)
        self._index.move_to_end(path)
        return self._index[path]


def _member_index(path: Path) -> list[dict[str, tuple[int, int]]] | Skip:
    """Per sample of the tar, in order: suffix -> (data offset, size); a Skip when the tar cannot be read
    at all. A tar damaged part way keeps the samples before the damage (the rest are `lost_in_shard`)."""
    groups: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if member.isfile():
                    key, _, suffix = member.name.partition(".")
                    groups.setdefault(key, {})[suffix] = (member.offset_data, member.size)
    except (tarfile.TarError, OSError, EOFError) as error:
        if not groups:
            return Skip("unreadable_shard", f"{path}: {type(error).__name__}: {error}")
        logger.warning("shard %s is damaged after %d samples: %s", path, len(groups), error)
        groups.popitem()  # the last group may be cut short
    return list(groups.values())


def _read_sample(path: Path, members: dict[str, tuple[int, int]]) -> Sample:
    files = {}
    try:
        with path.open("rb") as file:
            for suffix, (offset, size) in members.items():
                file.seek(offset)
                files[suffix] = file.read(size)
                if len(files[suffix]) != size:
                    raise Skip("lost_in_shard", f"{path}: member {suffix} is cut short")
        return Sample.from_dict(json.loads(files.pop("json")), files)
    except KeyError:
        raise Skip("missing_json", f"{path}: a sample without its .json member") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, DataError, TypeError) as error:
        raise Skip("invalid_sample", f"{path}: {type(error).__name__}: {error}") from None


class _CollateKept:
    """The DataLoader's collate_fn (runs in the workers): (slots, skips, the kept samples collated)."""

    def __init__(self, collate: Collate):
        self.collate = collate

    def __call__(self, items: list[tuple[Slot, Any]]) -> tuple[list[Slot], list[tuple[Slot, Skip]], Batch]:
        kept = [value for _, value in items if not isinstance(value, Skip)]
        skips = [(slot, value) for slot, value in items if isinstance(value, Skip)]
        return [slot for slot, _ in items], skips, self.collate(kept) if kept else {}


class _LocalSlots:
    """The DataLoader's batch sampler: this rank's slots of each global batch, from a copy of the plan."""

    def __init__(self, plan: StreamPlan, rank: int, world: int):
        self.plan, self.rank, self.world = plan, rank, world

    def __iter__(self) -> Iterator[list[Slot]]:
        local = self.plan.global_batch // self.world
        while True:
            slots = self.plan.next_batch()
            yield slots[self.rank * local : (self.rank + 1) * local]


class StreamingBatches:
    """A `BatchSource` for the Trainer: micro-batches streamed from shard directories (see the module doc).

    `next(rank, world)` returns this rank's collated tensors (an empty dict when every sample of it had to
    be skipped). Skips are counted per rank; `state_dict()` gathers them from every rank (call it on all),
    so a run resumed on another number of ranks still accounts for every sample."""

    def __init__(self, sources: list[StreamSource], micro_batch: int, encode: Encode, collate: Collate,
                 seed: int = 0, config: StreamConfig | None = None, pin_memory: bool = False):
        self.config = config or StreamConfig()
        self.plan = StreamPlan(sources, micro_batch, seed, self.config.shuffle_shards)
        self.reader = SampleReader([s.path for s in self.plan.sources], encode, seed)
        self.collate, self.pin_memory = _CollateKept(collate), pin_memory
        self.skips: dict[tuple[int, int], Counter[str]] = {}  # (source, epoch) -> reason -> samples, this rank
        self.reported = [0] * len(sources)  # per source: the next epoch to report
        self._carried: dict[tuple[int, int], Counter[str]] = {}  # restored skips, rank 0's to keep
        self._batches: Iterator | None = None
        self._layout: tuple[int, int] | None = None

    def next(self, rank: int = 0, world: int = 1) -> Batch:
        if self.plan.global_batch % world:
            raise ConfigError(f"the micro-batch ({self.plan.global_batch}) does not split evenly over {world} ranks")
        if self._batches is None or self._layout != (rank, world):
            self._start(rank, world)
        slots, skips, batch = next(self._batches)
        local = self.plan.global_batch // world
        if slots != self.plan.next_batch()[rank * local : (rank + 1) * local]:  # the consumed position, in step
            raise RuntimeError("the loader's batches and the plan disagree; this is a bug in vlstack")
        for (source, epoch, shard, position), skip in skips:
            self.skips.setdefault((source, epoch), Counter())[skip.reason] += 1
            logger.warning("skipped %s of %s: %s (%s)", self.plan.sources[source].ids[shard][position],
                           self.plan.sources[source].path, skip.reason, skip.detail)
        return batch

    def finished_epochs(self) -> list[dict[str, Any]]:
        """Each epoch all of whose samples have been drawn, once: `{source, epoch, samples, skipped_by_reason}`
        with this rank's skips (the Trainer sums them over ranks; the rest trained)."""
        done = []
        for source, index in enumerate(self.plan.sources):
            while self.plan.epoch_done(source, self.reported[source]):
                epoch = self.reported[source]
                done.append({"source": str(index.path), "epoch": epoch, "samples": len(index),
                             "skipped_by_reason": dict(self.skips.pop((source, epoch), {}))})
                self.reported[source] += 1
        return done

    def unreported_skips(self) -> dict[str, int]:
        """Skip reasons counted on this rank in the epochs `finished_epochs` has not reported yet."""
        return dict(sum(self.skips.values(), Counter()))

    def state_dict(self) -> dict[str, Any]:
        every_rank: dict[tuple[int, int], Counter[str]] = {}
        for part in gather_objects(self.skips):
            for key, counts in part.items():
                every_rank.setdefault(key, Counter()).update(counts)
        return {**self.plan.state_dict(), "reported": list(self.reported),
                "skips": [[s, e, dict(c)] for (s, e), c in sorted(every_rank.items())]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plan.load_state_dict(state)
        self.reported = list(state.get("reported", [0] * len(self.plan.sources)))
        self.skips = {}
        self._carried = {(s, e): Counter(c) for s, e, c in state.get("skips", [])}
        self._batches = None  # the loader restarts from the restored position

    def _start(self, rank: int, world: int) -> None:
        if self._carried:  # the skips of every rank before the resume: counted once, on rank 0
            if rank == 0:
                for key, counts in self._carried.items():
                    self.skips.setdefault(key, Counter()).update(counts)
            self._carried = {}
        workers = self.config.workers
        loader = DataLoader(self.reader, batch_sampler=_LocalSlots(copy.deepcopy(self.plan), rank, world),
                            num_workers=workers, collate_fn=self.collate, pin_memory=self.pin_memory,
                            prefetch_factor=self.config.prefetch_batches if workers else None,
                            persistent_workers=False,
                            generator=torch.Generator().manual_seed(self.plan.seed))  # not the global RNG's draw
        self._batches, self._layout = iter(loader), (rank, world)
