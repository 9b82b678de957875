"""Duplicate detection: exact hashes, perceptual hashes for images, MinHash-LSH for texts.

Split in two so the expensive half parallelises: `fingerprint()` is a pure
function of one sample (run it in any worker), and `Deduplicator` is the small
stateful index that must see fingerprints one at a time, in a fixed order (the
first sample seen is kept, later copies are "duplicate of <id>").

- Images: sha256 of the encoded bytes (exact copies), and a 64-bit DCT perceptual
  hash (pHash) compared by Hamming distance, which survives re-encoding, resizing
  and mild colour changes. Every query scans all kept hashes with a vectorised
  XOR + popcount (exact for any distance; ~1 ms per query per million kept).
  pHash keeps only the coarse structure, which distinct images with little of it
  share (a plain wall, a sky, a repeating texture at 32 px), so a near match must
  also have the same colours: an 8x8 colour thumbnail, scaled to a fixed mean
  brightness (a brighter copy stays a copy), within `max_colour_rms`.
- Texts: sha256 of the normalised text (NFKC, case-folded, punctuation and
  whitespace removed), and MinHash signatures over character 5-grams (which work
  for Chinese as well as English), banded for LSH and confirmed by estimated Jaccard.

What counts as a duplicate sample is set by `match`: 'pair' (the default) needs
both the images and the text to match, because captioning sets legitimately pair
one image with several captions (COCO has five) and reuse one caption for many
images; 'image' and 'text' look at one side only.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from PIL import Image

from vlstack.data.clean.verdict import Verdict
from vlstack.errors import ConfigError

EXACT = "dedup.exact"
NEAR = "dedup.near"

_MERSENNE = (1 << 61) - 1
_HASH_SIZE = 8  # pHash keeps the 8x8 lowest frequencies: 64 bits
_DCT_SIZE = 32


@dataclass
class DedupConfig:
    match: Literal["pair", "image", "text"] = "pair"
    """What must match for a sample to be a duplicate (see the module doc)."""
    max_hamming: int = 10
    """Largest pHash Hamming distance (of 64 bits) for near-duplicate images. Photographs: a cropped,
    halved, JPEG-70 copy measures <= 6, unrelated photographs >= 23. Flat 64 px synthetic scenes are
    less stable: 95% of 2 px crop + brightness + JPEG copies measure <= 10."""
    max_colour_rms: float = 16.0
    """Largest RMS difference (0-255 scale) of the brightness-scaled 8x8 colour thumbnails of a near
    duplicate. 16 keeps 94% of the photograph copies pHash finds and halves the distinct low-resolution
    images taken for copies (benchmarks/clean_quality.py)."""
    min_jaccard: float = 0.8
    """Smallest estimated Jaccard similarity of character 5-gram sets for near-duplicate texts."""
    shingle: int = 5
    """Characters per shingle."""
    num_perm: int = 128
    """MinHash signature length: the Jaccard estimate's standard error is ~ 0.5 / sqrt(num_perm)."""
    bands: int = 32
    """LSH bands (num_perm / bands rows each): 32 x 4 finds pairs at Jaccard 0.8 with probability ~1."""
    seed: int = 0
    """Seed of the MinHash permutations: fingerprints are comparable only under the same seed."""

    def __post_init__(self) -> None:
        if self.num_perm % self.bands:
            raise ConfigError(f"dedup.num_perm ({self.num_perm}) must be a multiple of dedup.bands ({self.bands})")
        if not 0 <= self.max_hamming <= 64:
            raise ConfigError(f"dedup.max_hamming must be in [0, 64], got {self.max_hamming}")


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """Everything the deduplicator needs of one sample; small and picklable."""

    image_sha256: tuple[str, ...]
    image_phash: tuple[int, ...]
    image_colours: tuple[np.ndarray, ...]  # [8, 8, 3] uint8 per image: `colour_thumbnail`
    text_sha256: str | None
    text_minhash: np.ndarray | None  # [num_perm] uint32


def phash(image: Image.Image) -> int:
    """64-bit perceptual hash: the 8x8 lowest 2-D DCT frequencies of a 32x32 grey thumbnail, each
    compared with the mean of the non-constant (AC) ones, so it encodes coarse structure, not pixels
    or encoding. (The median, which some pHash variants use, falls among the near-zero coefficients
    of flat images such as renders and documents, and there flips bits under a 1 px crop.)"""
    grey = np.asarray(image.convert("L").resize((_DCT_SIZE, _DCT_SIZE), Image.Resampling.LANCZOS), dtype=np.float64)
    basis = _dct_matrix(_DCT_SIZE)
    low = (basis @ grey @ basis.T)[:_HASH_SIZE, :_HASH_SIZE].ravel()  # [64], low[0] is the mean brightness
    bits = low > low[1:].mean()
    return int("".join("1" if b else "0" for b in bits), 2)


def colour_thumbnail(image: Image.Image) -> np.ndarray:
    """[8, 8, 3] uint8: the image's mean colours on an 8x8 grid, scaled so their mean is 128 (a brighter or
    darker copy has the same thumbnail)."""
    colours = np.asarray(image.convert("RGB").resize((8, 8), Image.Resampling.BOX), dtype=np.float64)
    return np.clip(colours * (128.0 / max(colours.mean(), 1.0)), 0, 255).round().astype(np.uint8)


def colour_rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def normalize_text(text: str) -> str:
    """NFKC, case-folded, without punctuation or whitespace: what two copies of a text share."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"[\W_]+", "", text)


def minhash(text: str, cfg: DedupConfig) -> np.ndarray:
    """MinHash signature [num_perm] of the text's character shingles (universal hashes mod 2^61-1),
    keeping each minimum's low 32 bits: half the memory, and a false match in 2^32."""
    normal = normalize_text(text)
    shingles = {normal[i : i + cfg.shingle] for i in range(max(1, len(normal) - cfg.shingle + 1))}
    values = np.array(
        [int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "little") for s in shingles],
        dtype=np.uint64,
    )  # [S], each < 2^32
    a, b = _permutations(cfg.num_perm, cfg.seed)  # [P] each, < 2^32: a * x + b stays below 2^64
    minima = ((values[None, :] * a[:, None] + b[:, None]) % np.uint64(_MERSENNE)).min(axis=1)  # [P]
    return minima.astype(np.uint32)


def fingerprint(
    text: str | None, images: Sequence[Image.Image] = (), image_bytes: Sequence[bytes] = (),
    cfg: DedupConfig | None = None,
) -> Fingerprint:
    """Hashes of one sample's text and images (`image_bytes`: the encoded files, for the exact hash)."""
    cfg = cfg or DedupConfig()
    has_text = bool(text and normalize_text(text))
    return Fingerprint(
        image_sha256=tuple(hashlib.sha256(data).hexdigest() for data in image_bytes),
        image_phash=tuple(phash(image) for image in images),
        image_colours=tuple(colour_thumbnail(image) for image in images),
        text_sha256=hashlib.sha256(normalize_text(text).encode()).hexdigest() if has_text else None,
        text_minhash=minhash(text, cfg) if has_text else None,
    )


class Deduplicator:
    """Stateful index over the samples kept so far; `check` answers and remembers."""

    def __init__(self, cfg: DedupConfig | None = None):
        self.cfg = cfg or DedupConfig()
        self._kept: dict[str, Fingerprint] = {}
        self._rank: dict[str, int] = {}
        self._by_image_sha: dict[str, list[str]] = defaultdict(list)
        self._by_text_sha: dict[str, list[str]] = defaultdict(list)
        self._phashes = np.zeros(1024, dtype=np.uint64)  # first-image pHash of each kept sample with images
        self._phash_ids: list[str] = []
        self._lsh_bands: dict[tuple[int, bytes], list[str]] = defaultdict(list)

    def check(self, sample_id: str, fp: Fingerprint) -> Verdict:
        """Keep (and index) a new sample, or name the earliest kept sample it duplicates."""
        candidates = self._candidates(fp)
        if not candidates:
            self._rank[sample_id] = len(self._kept)
            self._kept[sample_id] = fp
            self._index(sample_id, fp)
            return Verdict()
        original = min(candidates, key=self._rank.__getitem__)
        reason = EXACT if self._is_exact(fp, self._kept[original]) else NEAR
        return Verdict(reason=reason, detail=f"duplicate of {original}")

    def __len__(self) -> int:
        return len(self._kept)

    def _candidates(self, fp: Fingerprint) -> list[str]:
        """Kept samples that match `fp` on the sides `cfg.match` compares."""
        match = self.cfg.match
        if match == "image" or (match == "pair" and fp.image_phash):
            found = self._image_candidates(fp)
            return [c for c in found if self._texts_match(fp, self._kept[c])] if match == "pair" else found
        found = self._text_candidates(fp)  # text mode, or a pair without images
        return [c for c in found if self._images_match(fp, self._kept[c])] if match == "pair" else found

    def _image_candidates(self, fp: Fingerprint) -> list[str]:
        if not fp.image_phash:
            return []
        distances = np.bitwise_count(self._phashes[: len(self._phash_ids)] ^ np.uint64(fp.image_phash[0]))
        seen = {self._phash_ids[i] for i in np.flatnonzero(distances <= self.cfg.max_hamming)}
        if fp.image_sha256:
            seen.update(self._by_image_sha.get(fp.image_sha256[0], ()))
        return [c for c in seen if self._images_match(fp, self._kept[c])]

    def _text_candidates(self, fp: Fingerprint) -> list[str]:
        if fp.text_minhash is None:
            return []
        if fp.text_sha256 in self._by_text_sha:  # exact copies: no need to look further
            return self._by_text_sha[fp.text_sha256]
        seen: set[str] = set()
        for band, key in enumerate(self._band_keys(fp.text_minhash)):
            seen.update(self._lsh_bands.get((band, key), ()))
        return [c for c in seen if self._texts_match(fp, self._kept[c])]

    def _images_match(self, a: Fingerprint, b: Fingerprint) -> bool:
        if len(a.image_phash) != len(b.image_phash):
            return False
        return _same_bytes(a, b) or all(
            (x ^ y).bit_count() <= self.cfg.max_hamming and colour_rms(u, v) <= self.cfg.max_colour_rms
            for x, y, u, v in zip(a.image_phash, b.image_phash, a.image_colours, b.image_colours)
        )

    def _texts_match(self, a: Fingerprint, b: Fingerprint) -> bool:
        if a.text_minhash is None or b.text_minhash is None:
            return a.text_minhash is None and b.text_minhash is None
        if a.text_sha256 == b.text_sha256:
            return True
        return float(np.mean(a.text_minhash == b.text_minhash)) >= self.cfg.min_jaccard

    def _is_exact(self, a: Fingerprint, b: Fingerprint) -> bool:
        """Byte-identical images and normalised-identical text, on the sides compared."""
        images = self.cfg.match == "text" or _same_bytes(a, b)
        return images and (self.cfg.match == "image" or a.text_sha256 == b.text_sha256)

    def _index(self, sample_id: str, fp: Fingerprint) -> None:
        if fp.image_phash:
            if len(self._phash_ids) == len(self._phashes):
                self._phashes = np.concatenate([self._phashes, np.zeros_like(self._phashes)])
            self._phashes[len(self._phash_ids)] = fp.image_phash[0]
            self._phash_ids.append(sample_id)
        if fp.image_sha256:
            self._by_image_sha[fp.image_sha256[0]].append(sample_id)
        if fp.text_minhash is not None:
            self._by_text_sha[fp.text_sha256].append(sample_id)
            for band, key in enumerate(self._band_keys(fp.text_minhash)):
                self._lsh_bands[(band, key)].append(sample_id)

    def _band_keys(self, signature: np.ndarray) -> list[bytes]:
        return [rows.tobytes() for rows in signature.reshape(self.cfg.bands, -1)]


def _same_bytes(a: Fingerprint, b: Fingerprint) -> bool:
    """Every image of both samples has a byte hash, and they are equal."""
    return len(a.image_sha256) == len(a.image_phash) and a.image_sha256 == b.image_sha256


@lru_cache(maxsize=1)
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II basis [n, n]: rows are frequencies, so D @ x transforms a column."""
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    basis = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    basis[0] /= np.sqrt(2.0)
    return basis


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 32, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64)
    return a, b
