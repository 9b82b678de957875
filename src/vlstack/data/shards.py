"""WebDataset shards: write samples as `{key}.{image name}` + `{key}.json` tar members, read them back.

Writing and reading use `tarfile` directly. The files are plain WebDataset shards
(the `webdataset` package reads them), but owning the I/O buys three things: the
bytes are the same for the same samples (fixed member headers), a shard appears
under its final name only once complete (temp file + rename), and a reader that
hits a truncated or corrupt tar yields everything before the damage and reports
the rest — by id, because `manifest.jsonl` lists the ids in each shard.

Keys are the sample's position in the write (`000000042`), so any id is allowed;
the id itself lives in the JSON.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlstack.data.schema import Rejected, Sample
from vlstack.errors import DataError

MANIFEST = "manifest.jsonl"
MAX_MEMBER_BYTES = 256 * 2**20
"""A shard member over this is not read: no image or JSON of a sample is that large."""
_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


@dataclass
class ShardInfo:
    """One line of `manifest.jsonl`."""

    shard: str
    """File name, relative to the manifest's directory."""
    count: int
    ids: list[str]
    bytes: int = 0


class ShardWriter:
    """Write samples into numbered tar shards of `samples_per_shard` each, and the manifest."""

    def __init__(self, out_dir: str | Path, samples_per_shard: int = 1000, prefix: str = "shard") -> None:
        if samples_per_shard < 1:
            raise DataError(f"samples_per_shard must be at least 1, got {samples_per_shard}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.samples_per_shard = samples_per_shard
        self.prefix = prefix
        self.shards: list[ShardInfo] = []
        self._written = 0
        self._tar: tarfile.TarFile | None = None
        self._ids: list[str] = []
        self._manifest = (self.out_dir / MANIFEST).open("w", encoding="utf-8")

    def write(self, sample: Sample) -> None:
        """Append one sample; every image must carry its bytes. Invalid samples are a DataError."""
        sample.validate()
        missing = [ref.name for ref in sample.images if ref.data is None]
        if missing:
            raise DataError(f"sample {sample.id!r}: field 'images' has no bytes for {missing}; load them first")
        if self._tar is None:
            self._open_shard()
        key = f"{self._written:09d}"
        for ref in sample.images:
            self._add(f"{key}.{ref.name}", ref.data)
        self._add(f"{key}.json", json.dumps(sample.to_dict(), ensure_ascii=False).encode("utf-8"))
        self._ids.append(sample.id)
        self._written += 1
        if len(self._ids) == self.samples_per_shard:
            self._close_shard()

    def close(self) -> list[ShardInfo]:
        """Finish the last shard and the manifest; returns what was written."""
        if self._tar is not None:
            self._close_shard()
        self._manifest.close()
        return self.shards

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _shard_path(self) -> Path:
        return self.out_dir / f"{self.prefix}-{len(self.shards):05d}.tar"

    def _open_shard(self) -> None:
        self._tar = tarfile.open(self._shard_path().with_suffix(".tar.tmp"), "w", format=tarfile.USTAR_FORMAT)

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o444, 0
        self._tar.addfile(info, io.BytesIO(data))

    def _close_shard(self) -> None:
        self._tar.close()
        path = self._shard_path()
        os.replace(path.with_suffix(".tar.tmp"), path)
        info = ShardInfo(path.name, len(self._ids), self._ids, path.stat().st_size)
        self.shards.append(info)
        self._manifest.write(json.dumps(asdict(info), ensure_ascii=False) + "\n")
        self._manifest.flush()
        self._tar, self._ids = None, []


def write_shards(samples: Iterable[Sample], out_dir: str | Path, samples_per_shard: int = 1000) -> list[ShardInfo]:
    """Write all `samples` to `out_dir`; returns the manifest entries."""
    with ShardWriter(out_dir, samples_per_shard) as writer:
        for sample in samples:
            writer.write(sample)
    return writer.shards


def read_manifest(directory: str | Path) -> list[ShardInfo]:
    path = Path(directory) / MANIFEST
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        return [ShardInfo(**json.loads(line)) for line in lines if line.strip()]
    except (OSError, ValueError, TypeError) as error:
        raise DataError(f"{path}: cannot read the shard manifest ({error}); rewrite the shards") from error


@dataclass
class TarGroup:
    """The members of one WebDataset sample: `files` maps suffix (`jpg`, `json`, `1.png`) to bytes."""

    key: str
    files: dict[str, bytes]
    source: str
    oversized: list[str] = field(default_factory=list)
    """Members not read because they are over the reader's byte limit: "suffix (N bytes)"."""


def iter_tar(path: str | Path, max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[TarGroup | Rejected]:
    """Stream a tar's members grouped by key; damage ends the stream with a `Rejected`, never an exception.

    A member over `max_member_bytes` is not read (a small file can declare gigabytes); its group lists it
    in `oversized`, so the sample is rejected with a reason.

    A group cut short by the damage is not yielded (it may lack a member); the
    `Rejected` says how many groups came through and what broke. An uncompressed
    tar cut exactly between members reads like a shorter archive, so its missing
    end-of-archive blocks are checked too.
    """
    source, group, complete = str(path), None, 0
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, _, suffix = base.partition(".")
                key = f"{folder}/{stem}" if folder else stem
                if group is not None and group.key != key:
                    yield group
                    complete += 1
                    group = None
                if group is None:
                    group = TarGroup(key, {}, source)
                if member.size > max_member_bytes:
                    group.oversized.append(f"{suffix} ({member.size:,} bytes)")
                else:
                    group.files[suffix] = tar.extractfile(member).read()
    except _TAR_ERRORS as error:
        yield Rejected(None, "unreadable_shard", f"{type(error).__name__}: {error} after {complete} sample(s)", source)
        return
    if group is not None:
        yield group
        complete += 1
    if _cut_between_members(Path(path)):
        detail = f"no end-of-archive marker (truncated?) after {complete} sample(s)"
        yield Rejected(None, "unreadable_shard", detail, source)


def _cut_between_members(path: Path) -> bool:
    """True when an uncompressed tar lacks the two zero blocks every complete archive ends with."""
    with path.open("rb") as file:
        if file.read(6).startswith(_COMPRESSED_MAGIC):
            return False  # a cut compressed stream already fails to decompress
        size = file.seek(0, os.SEEK_END)
        file.seek(max(0, size - 1024))
        return size % 512 != 0 or file.read(1024) != bytes(1024)


def read_shard(path: str | Path, expected_ids: list[str] | None = None,
               max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[Sample | Rejected]:
    """Samples of one shard; each unreadable sample, and each expected id never seen, as a `Rejected`."""
    source, seen = str(path), set()
    if not Path(path).is_file():
        yield from (Rejected(i, "missing_shard", "the shard file does not exist", source) for i in expected_ids or [])
        if expected_ids is None:
            yield Rejected(None, "missing_shard", "the shard file does not exist", source)
        return
    damage = None
    for item in iter_tar(path, max_member_bytes):
        if isinstance(item, Rejected):
            damage = item
            continue
        result = _sample_from_group(item, max_member_bytes)
        if result.id is not None:
            seen.add(result.id)
        yield result
    lost = [i for i in expected_ids or [] if i not in seen]
    reason = damage.reason if damage else "lost_in_shard"
    detail = damage.detail if damage else "listed in the manifest but not in the shard"
    yield from (Rejected(i, reason, detail, source) for i in lost)
    if damage and not lost:
        yield damage


def read_shards(directory: str | Path) -> Iterator[Sample | Rejected]:
    """Every sample of a shard directory, in manifest order (or sorted `*.tar` without a manifest)."""
    directory = Path(directory)
    if (directory / MANIFEST).exists():
        for info in read_manifest(directory):
            yield from read_shard(directory / info.shard, info.ids)
    else:
        for path in sorted(directory.glob("*.tar")):
            yield from read_shard(path)


def oversized(group: TarGroup, max_member_bytes: int = MAX_MEMBER_BYTES) -> Rejected:
    """The rejection of a group with members over the byte limit (named by its JSON's id when it has one)."""
    sample_id = None
    if "json" in group.files:
        with contextlib.suppress(UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            sample_id = json.loads(group.files["json"].decode("utf-8")).get("id")
    return Rejected(sample_id, "member_too_large", f"members {', '.join(group.oversized)} are over the reader's limit "
                                                   f"of {max_member_bytes:,} bytes", f"{group.source}:{group.key}")


def _sample_from_group(group: TarGroup, max_member_bytes: int = MAX_MEMBER_BYTES) -> Sample | Rejected:
    where = f"{group.source}:{group.key}"
    if group.oversized:
        return oversized(group, max_member_bytes)
    if "json" not in group.files:
        return Rejected(None, "missing_json", f"members {sorted(group.files)} but no .json", where)
    try:
        data = json.loads(group.files["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return Rejected(None, "bad_json", str(error), where)
    sample_id = data.get("id") if isinstance(data, dict) else None
    try:
        sample = Sample.from_dict(data, group.files)
    except (DataError, TypeError) as error:
        return Rejected(sample_id, "invalid_sample", str(error), where)
    missing = [ref.name for ref in sample.images if ref.data is None]
    if missing:
        return Rejected(sample.id, "missing_image", f"no member for image(s) {missing}", where)
    return sample
