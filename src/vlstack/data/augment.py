"""Augmentation that keeps labels true.

Images: torchvision v2 ColorJitter(brightness, contrast, saturation = 0.4) with
p = 0.5, then RandAugment(num_ops=3), then an optional horizontal flip. Texts:
synonym replacement from the shipped English and Chinese tables
(`resources/synonyms_*.txt`), each eligible word with p = 0.1, in a text chosen
with p = 0.7.

Guards, decided from the sample's texts, so an augmented pair never lies:
- the text names a colour -> no operation that changes hue (RandAugment's
  Solarize inverts colours; AutoContrast and Equalize stretch each channel on its
  own and can turn a red square black);
- the text names a direction (left/right/up/down/top/bottom/above/below, 左右上下)
  -> no flip, rotation or shear;
- the sample has boxes (grounding) -> no geometric operation at all, since boxes
  are not transformed with the image;
- labels (VQA answers, OCR targets) are never rewritten (`label=True`), and words
  of them inside a question are `protected`.

Everything is a pure function of the given `torch.Generator` / `random.Random`:
the image transforms draw from the global torch RNG, so they run inside
`torch.random.fork_rng` seeded from the generator, leaving the global state as it was.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import torch
from PIL import Image
from torchvision.transforms import v2

COLOR_WORDS_EN = (
    "red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "black", "white", "gray", "grey",
    "cyan", "magenta", "violet", "indigo", "teal", "turquoise", "beige", "maroon", "navy", "gold", "golden",
    "silver", "color", "colour", "colored", "coloured", "colorful", "colourful",
)
COLOR_CHARS_ZH = "红绿蓝黄紫橙粉棕褐黑白灰青金银色"
DIRECTION_WORDS_EN = (
    "left", "right", "top", "bottom", "above", "below", "under", "beneath", "over", "up", "down",
    "upper", "lower", "leftmost", "rightmost", "upside", "clockwise", "counterclockwise",
)
DIRECTION_CHARS_ZH = "左右上下顶底"

HUE_OPS = frozenset({"Solarize", "AutoContrast", "Equalize"})
ORIENTATION_OPS = frozenset({"Rotate", "ShearX", "ShearY"})
GEOMETRIC_OPS = ORIENTATION_OPS | {"TranslateX", "TranslateY"}

_COLOR = re.compile(rf"(?i)(?<![a-z])(?:{'|'.join(COLOR_WORDS_EN)})s?(?![a-z])|[{COLOR_CHARS_ZH}]")
_DIRECTION = re.compile(rf"(?i)(?<![a-z])(?:{'|'.join(DIRECTION_WORDS_EN)})s?(?![a-z])|[{DIRECTION_CHARS_ZH}]")


@dataclass
class AugmentConfig:
    color_jitter: tuple[float, float, float] = (0.4, 0.4, 0.4)
    """ColorJitter brightness, contrast, saturation (no hue jitter: colour words must stay true)."""
    color_jitter_p: float = 0.5
    """Probability of applying the colour jitter."""
    randaugment_ops: int = 3
    """RandAugment operations per image."""
    randaugment_magnitude: int = 9
    """RandAugment magnitude (of 31 bins; 9 rotates by up to 9 degrees)."""
    hflip_p: float = 0.0
    """Horizontal flip probability; not in the article, and never applied when a text names a direction."""
    synonym_word_p: float = 0.1
    """Probability of replacing each word that has synonyms."""
    synonym_text_p: float = 0.7
    """Probability of augmenting a text at all."""


def names_color(texts: Iterable[str]) -> bool:
    return any(_COLOR.search(text) for text in texts)


def names_direction(texts: Iterable[str]) -> bool:
    return any(_DIRECTION.search(text) for text in texts)


def excluded_ops(texts: Sequence[str], has_boxes: bool = False) -> frozenset[str]:
    """RandAugment operations that would make these texts (or boxes) false for the augmented image."""
    excluded: frozenset[str] = frozenset()
    if names_color(texts):
        excluded |= HUE_OPS
    if names_direction(texts):
        excluded |= ORIENTATION_OPS
    if has_boxes:
        excluded |= GEOMETRIC_OPS
    return excluded


class GuardedRandAugment(v2.RandAugment):
    """RandAugment drawing from its operations minus `excluded` (torchvision's operation names)."""

    def __init__(self, excluded: frozenset[str] = frozenset(), **kwargs):
        super().__init__(**kwargs)
        space = v2.RandAugment._AUGMENTATION_SPACE  # torchvision's table of operations (private)
        unknown = excluded - set(space)
        if unknown:  # guards must never silently stop working after a torchvision upgrade
            raise RuntimeError(f"RandAugment has no operations {sorted(unknown)}; it has {sorted(space)}")
        self._AUGMENTATION_SPACE = {name: op for name, op in space.items() if name not in excluded}


def augment_image(
    image: Image.Image,
    texts: Sequence[str],
    generator: torch.Generator,
    cfg: AugmentConfig | None = None,
    has_boxes: bool = False,
) -> Image.Image:
    """Augment `image` without falsifying `texts` (all texts of the sample) or its boxes."""
    cfg = cfg or AugmentConfig()
    brightness, contrast, saturation = cfg.color_jitter
    steps = [
        v2.RandomApply([v2.ColorJitter(brightness, contrast, saturation)], p=cfg.color_jitter_p),
        GuardedRandAugment(
            excluded_ops(texts, has_boxes), num_ops=cfg.randaugment_ops, magnitude=cfg.randaugment_magnitude
        ),
    ]
    if cfg.hflip_p > 0 and not has_boxes and not names_direction(texts):
        steps.append(v2.RandomHorizontalFlip(p=cfg.hflip_p))
    transform = v2.Compose(steps)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image.convert("RGB"))


class WordGroups:
    """Word -> the other words of its groups (synonyms here; contradicting alternatives in
    `vlstack.data.negatives`); matches whole English words (case-insensitively) and Chinese words anywhere,
    longest first."""

    def __init__(self, groups: Iterable[Sequence[str]]):
        synonyms: dict[str, set[str]] = {}
        for group in groups:
            words = {w.strip().lower() for w in group if w.strip()}
            for word in words:
                synonyms.setdefault(word, set()).update(words - {word})
        self.synonyms = {w: tuple(sorted(alts)) for w, alts in synonyms.items() if alts}
        keys = sorted(self.synonyms, key=lambda w: (-len(w), w))
        self.pattern = re.compile("|".join(_word_pattern(w) for w in keys), re.IGNORECASE) if keys else None

    @classmethod
    def from_text(cls, text: str) -> WordGroups:
        """Parse the resource format: one group per line, words separated by '|', '#' comments."""
        lines = (line.split("#", 1)[0] for line in text.splitlines())
        return cls(line.split("|") for line in lines if line.strip())


@lru_cache(maxsize=1)
def default_synonyms() -> WordGroups:
    """The shipped English and Chinese tables."""
    return shipped_groups("synonyms")


def shipped_groups(kind: str) -> WordGroups:
    """The word groups of `resources/{kind}_en.txt` and `{kind}_zh.txt`."""
    folder = resources.files("vlstack.data") / "resources"
    return WordGroups.from_text("\n".join((folder / f"{kind}_{lang}.txt").read_text(encoding="utf-8")
                                          for lang in ("en", "zh")))


def augment_text(
    text: str,
    rng: random.Random,
    cfg: AugmentConfig | None = None,
    label: bool = False,
    protected: Iterable[str] = (),
    table: WordGroups | None = None,
) -> str:
    """Synonym replacement that keeps the text true.

    `label=True` marks a label (a VQA answer, an OCR target): it is returned
    unchanged. Occurrences of `protected` strings (e.g. the answers, inside their
    question) are never touched.
    """
    cfg = cfg or AugmentConfig()
    table = table or default_synonyms()
    if label or table.pattern is None or rng.random() >= cfg.synonym_text_p:
        return text
    lowered = text.lower()
    frozen = [
        (m.start(), m.end())
        for phrase in protected if phrase.strip()
        for m in re.finditer(re.escape(phrase.lower()), lowered)
    ]

    def replace(match: re.Match[str]) -> str:
        word = match.group()
        if any(start < match.end() and match.start() < end for start, end in frozen):
            return word
        if rng.random() >= cfg.synonym_word_p:
            return word
        choice = rng.choice(table.synonyms[word.lower()])
        return choice[0].upper() + choice[1:] if word[0].isupper() else choice

    return table.pattern.sub(replace, text)


def _word_pattern(word: str) -> str:
    """English words match whole (not inside longer words); CJK words have no boundaries to check."""
    escaped = re.escape(word)
    return rf"(?<![a-z]){escaped}(?![a-z])" if re.search(r"[a-z]", word) else escaped
