from __future__ import annotations

import io
import pickle
import random

import numpy as np
import pytest
from PIL import Image

from vlstack.config import from_dict
from vlstack.data.clean import dedup
from vlstack.data.clean.dedup import DedupConfig, Deduplicator, Fingerprint, fingerprint, minhash, normalize_text, phash
from vlstack.errors import ConfigError

CAPTION = "An astronaut in a white suit poses in front of the American flag and a model of the space shuttle."


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def resized_jpeg(image: Image.Image, scale: float, quality: int) -> Image.Image:
    small = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_phash_finds_resized_recompressed_copy_not_other_image(astronaut, coffee):
    limit = DedupConfig().max_hamming
    assert hamming(phash(astronaut), phash(resized_jpeg(astronaut, 0.6, 60))) <= 2
    assert hamming(phash(astronaut), phash(coffee)) > 3 * limit


def test_a_brighter_copy_matches_and_a_structureless_image_of_other_colours_does_not(astronaut, encode):
    cfg = DedupConfig(match="image")
    index = Deduplicator(cfg)
    brighter = astronaut.point(lambda v: min(255, round(v * 1.08)))
    assert index.check("orig", scene_fp(astronaut, "", encode)).keep
    assert index.check("brighter", scene_fp(brighter, "", encode)).detail == "duplicate of orig"
    # two plain gradients: the same coarse structure (pHash), so only the colours tell them apart
    ramp = np.linspace(60, 200, 32)[None, :, None] * np.ones((32, 1, 1))
    sky = Image.fromarray((ramp * [0.6, 0.8, 1.0]).astype(np.uint8))
    sand = Image.fromarray((ramp * [1.0, 0.9, 0.6]).astype(np.uint8))
    assert hamming(phash(sky), phash(sand)) <= cfg.max_hamming
    assert index.check("sky", scene_fp(sky, "", encode)).keep and index.check("sand", scene_fp(sand, "", encode)).keep


def test_text_normalisation_and_minhash_estimate():
    assert normalize_text("  Ｈello,   WORLD! ") == normalize_text("hello world")
    cfg = DedupConfig()
    a = "the quick brown fox jumps over the lazy dog near the river bank"
    b = a.replace("lazy", "sleepy")
    shingles = [{normalize_text(t)[i : i + 5] for i in range(len(normalize_text(t)) - 4)} for t in (a, b)]
    true_jaccard = len(shingles[0] & shingles[1]) / len(shingles[0] | shingles[1])
    estimate = float(np.mean(minhash(a, cfg) == minhash(b, cfg)))
    assert abs(estimate - true_jaccard) < 0.15


def scene_fp(image: Image.Image, text: str, encode, cfg: DedupConfig | None = None) -> Fingerprint:
    return fingerprint(text, [image], [encode(image, "PNG")], cfg)


def test_pair_mode(astronaut, coffee, encode):
    index = Deduplicator()
    assert index.check("orig", scene_fp(astronaut, CAPTION, encode)).keep
    exact = index.check("copy", scene_fp(astronaut, CAPTION.upper() + "  ", encode))
    assert exact.reason == dedup.EXACT and exact.detail == "duplicate of orig"
    near = index.check("near", scene_fp(resized_jpeg(astronaut, 0.7, 70), CAPTION.replace("white", "bright"), encode))
    assert near.reason == dedup.NEAR and near.detail == "duplicate of orig"
    assert index.check("same-image-new-caption", scene_fp(astronaut, "A portrait of Eileen Collins.", encode)).keep
    assert index.check("same-caption-new-image", scene_fp(coffee, CAPTION, encode)).keep
    assert len(index) == 3


def test_image_mode_ignores_captions(astronaut, encode):
    index = Deduplicator(DedupConfig(match="image"))
    index.check("a", scene_fp(astronaut, CAPTION, encode))
    verdict = index.check("b", scene_fp(resized_jpeg(astronaut, 0.5, 80), "something else entirely", encode))
    assert verdict.reason == dedup.NEAR and verdict.detail == "duplicate of a"


@pytest.mark.parametrize(
    ("first", "second", "duplicate"),
    [
        (CAPTION, CAPTION.replace("white", "bright").replace("model", "replica"), True),
        (CAPTION, "A cup of coffee with latte art on a saucer, photographed from above on a wooden table.", False),
        (
            "左边是一个绿色的三角形，右边是一个黄色的正方形，背景是浅灰色的。",
            "左边是一个绿色的三角形，右边是一个黄色的正方形，背景是浅灰色。",
            True,
        ),
        ("左边是一个绿色的三角形，右边是一个黄色的正方形。", "中间是一个紫色的圆形，周围没有别的东西。", False),
    ],
)
def test_text_mode_minhash_near_duplicates(first, second, duplicate):
    index = Deduplicator(DedupConfig(match="text"))
    index.check("first", fingerprint(first))
    verdict = index.check("second", fingerprint(second))
    assert (verdict.reason == dedup.NEAR) == duplicate
    assert (verdict.detail == "duplicate of first") == duplicate


def test_samples_without_images_fall_back_to_text():
    index = Deduplicator()
    index.check("t1", fingerprint("A long enough sentence about an interleaved document page."))
    copy = fingerprint("a long enough sentence about an interleaved document page")
    assert index.check("t2", copy).reason == dedup.EXACT
    assert index.check("empty", fingerprint("")).keep and index.check("empty2", fingerprint(None)).keep


def test_phash_index_finds_every_hash_within_the_distance():
    rng = random.Random(0)
    cfg = DedupConfig(match="image")
    index = Deduplicator(cfg)
    stored = [rng.getrandbits(64) for _ in range(300)]
    grey = (np.full((8, 8, 3), 128, dtype=np.uint8),)  # the same colours: only the hashes differ
    for i, value in enumerate(stored):
        index.check(f"s{i}", Fingerprint((), (value,), grey, None, None))
    for i, value in enumerate(stored[:100]):
        flipped = value
        for bit in rng.sample(range(64), rng.randint(1, cfg.max_hamming)):
            flipped ^= 1 << bit
        assert index.check(f"q{i}", Fingerprint((), (flipped,), grey, None, None)).detail == f"duplicate of s{i}"


def test_fingerprints_pickle_for_worker_processes(astronaut, encode):
    fp = scene_fp(astronaut, CAPTION, encode)
    restored = pickle.loads(pickle.dumps(fp))
    assert restored.image_phash == fp.image_phash and np.array_equal(restored.text_minhash, fp.text_minhash)


def test_config_validated():
    with pytest.raises(ConfigError, match="multiple of"):
        from_dict(DedupConfig, {"num_perm": 100, "bands": 32})
    with pytest.raises(ConfigError, match="max_hamming"):
        DedupConfig(max_hamming=65)
