"""POPE probes (Li et al. 2023; AoiDragon/POPE `utils.py`): yes/no questions about ground-truth
objects with random, popular and adversarial (co-occurrence) negatives.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vlstack.errors import ConfigError, DataError

POPE_SETTINGS = ("random", "popular", "adversarial")
POPE_TEMPLATE = "Is there a {} in the image?"
"""POPE's default template (main.py)."""


@dataclass
class PopeProbe:
    """One line of a POPE file (`question_id`, `image`, `text`, `label`), plus the object asked about."""

    question_id: int
    image: str
    text: str
    label: str
    object: str

    def to_json(self) -> dict[str, Any]:
        return {"question_id": self.question_id, "image": self.image, "text": self.text, "label": self.label}


def pope_probes(images: Mapping[str, Sequence[str]], setting: str, sample_num: int = 3, seed: int = 0,
                template: str = POPE_TEMPLATE) -> list[PopeProbe]:
    """POPE questions for `images` (image name -> its ground-truth objects), as POPE's `pope()` builds them.

    For each image and each of its first `sample_num` objects: a "yes" question on that
    object, then a "no" question on an object neither in the image nor asked before for
    it: `random` draws one uniformly from every object of the data set; `popular` takes the
    most frequent one; `adversarial` the one most often seen together with the positive
    object (falling back to a random one). Deviations: the random draw is from a seeded
    generator over the valid objects (POPE redraws from the global `random` until one is
    valid), an image with no valid negative left is an error (POPE would loop forever),
    and only the article becomes "an" before a vowel (POPE's `template.replace("a", "an")`
    also writes "imange" into its released files).
    """
    if setting not in POPE_SETTINGS:
        raise ConfigError(f"unknown POPE setting {setting!r}; valid: {', '.join(POPE_SETTINGS)}")
    images = {name: list(dict.fromkeys(objects)) for name, objects in images.items()}
    short = [name for name, objects in images.items() if len(objects) < sample_num]
    if short:
        raise DataError(f"POPE needs {sample_num} objects per image (sample_num); {len(short)} image(s) have fewer, "
                        f"e.g. {short[0]!r}")
    counts = Counter(o for objects in images.values() for o in objects)
    vocabulary = list(counts)
    popular = sorted(counts, key=counts.__getitem__, reverse=True)
    co_occurring = co_occurrence(images.values())
    rng = random.Random(seed)
    probes: list[PopeProbe] = []

    def ask(image: str, obj: str, label: str) -> None:
        text = template.replace("a {}", "an {}", 1) if obj[:1] in ("a", "e", "i", "o", "u") else template
        probes.append(PopeProbe(len(probes) + 1, image, text.format(obj), label, obj))

    for image, objects in images.items():
        asked: list[str] = []
        for positive in objects[:sample_num]:
            asked.append(positive)
            ask(image, positive, "yes")
            valid = [o for o in vocabulary if o not in asked and o not in objects]
            if not valid:
                raise DataError(f"POPE: no object of the data set is absent from image {image!r} and not yet asked; "
                                "use more images or a larger vocabulary")
            ranked = {"random": [], "popular": popular, "adversarial": co_occurring.get(positive, [])}[setting]
            negative = next((o for o in ranked if o in valid), None) or rng.choice(valid)
            asked.append(negative)
            ask(image, negative, "no")
    return probes


def co_occurrence(object_lists: Iterable[Sequence[str]]) -> dict[str, list[str]]:
    """For each object, the others that appear in an image with it, most often first (POPE's
    `compute_co_occurrence`; ties keep the order of first co-occurrence)."""
    counts: dict[str, Counter] = {}
    for objects in object_lists:
        for obj in objects:
            counts.setdefault(obj, Counter()).update(other for other in objects if other != obj)
    return {obj: sorted(others, key=others.__getitem__, reverse=True) for obj, others in counts.items()}
