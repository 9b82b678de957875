"""Swap negatives: a caption made false on purpose by swapping one word for a contradicting one.

A contrastive model can match most captions to their images from one easy cue (colour, say) and never
learn the rest: in a batch, few captions share their colours but differ in a shape. NegCLIP
(Yuksekgonul et al. 2023, "When and why vision-language models behave like bags-of-words") adds, for
every image, its own caption with words swapped as an extra negative; the model must then bind each
attribute to its object. Here one word of a contrast group (`resources/contrasts_*.txt`: colours,
shapes, directions, sizes, counts; every word of a group contradicts the others) is replaced by
another of its group, so "a red circle on the left" may become "a red square on the left".
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

from vlstack.data.augment import WordGroups, shipped_groups
from vlstack.errors import ConfigError


@lru_cache(maxsize=1)
def default_contrasts() -> WordGroups:
    """The shipped English and Chinese contrast groups."""
    return shipped_groups("contrasts")


def contrast_groups(path: str | None) -> WordGroups:
    """The contrast groups of the file at `path` (`data.contrasts`: one group a line, words separated by
    ' | '), or the shipped ones."""
    if path is None:
        return default_contrasts()
    if not Path(path).is_file():
        raise ConfigError(f"data.contrasts {path!r} is not a file of contrast groups (one group a line, words "
                          "separated by ' | ')")
    groups = WordGroups.from_text(Path(path).read_text(encoding="utf-8"))
    if groups.pattern is None:
        raise ConfigError(f"data.contrasts {path!r} holds no group of two or more words")
    return groups


def swap_negative(text: str, rng: random.Random, groups: WordGroups | None = None) -> str | None:
    """`text` with one of its contrast words (chosen at random) replaced by another word of its group, keeping
    its capital; None when no word of `text` is in a group (or the swap leaves it unchanged)."""
    groups = groups or default_contrasts()
    if groups.pattern is None:
        return None
    matches = list(groups.pattern.finditer(text))
    if not matches:
        return None
    match = rng.choice(matches)
    word = match.group()
    choice = rng.choice(groups.synonyms[word.lower()])
    choice = choice[0].upper() + choice[1:] if word[0].isupper() else choice
    swapped = text[: match.start()] + choice + text[match.end():]
    return swapped if swapped != text else None
