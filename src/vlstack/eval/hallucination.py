"""Hallucination: the seed's entity-level detector, POPE probes and CHAIR, on scenes with known objects.

- **Entities** are read from a response with a lexicon (objects, attributes, places and
  their synonyms, English and Chinese; plurals derived): a noun phrase is an object with
  the attributes before it ("two red circles", "红色的圆形") or after a copula ("the
  circle is red"); a negation earlier in its clause ("there is no blue square",
  "没有三角形") marks it as not claimed. spaCy is not used: no model ships with vlstack.
- **Detector**: each claimed entity is scored with the model's ITC embeddings. The
  response's entities are rendered in the caption grammar the model was pretrained on
  ("a red circle on the left and ..."), which makes Chinese and English responses one
  case; then the entity's attribute is swapped for every other attribute of the lexicon,
  and its object for every other object. Each part's score is the softmax (at the ITC
  temperature) of the original caption's cosine with the image among its swaps: the
  probability that the image shows this colour (shape) rather than another in the same
  context. The entity's score is the lower of the two. Raw phrase cosines ("a red
  circle") separate faithful from hallucinated entities far worse (measured: caption
  AUROC 0.65 vs 0.88 on one tiny checkpoint). Labels: below `low` hallucination, above
  `high` reliable, uncertain between; the seed's thresholds are 0.15 / 0.3, ours are
  fitted on held-out faithful vs hallucinated captions and stored in the checkpoint
  (`hallucination_calibration.json`, read by `HallucinationDetector.from_checkpoint`).
- **POPE** (Li et al. 2023; AoiDragon/POPE `utils.py`): yes/no probes from ground-truth
  objects with random, popular and adversarial (co-occurrence) negatives, answered
  through the Engine and scored by `metrics.pope_metrics`.
- **CHAIR** (Rohrbach et al. 2018; LisaAnne/Hallucination `utils/chair.py`): CHAIR_s and
  CHAIR_i of generated captions against each scene's objects, through the synonym list.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from vlstack.config import from_dict, to_dict
from vlstack.data.collate import image_to_tensor, tokenize_texts
from vlstack.data.synthetic import (
    COLORS,
    COLORS_ZH,
    PLACES_EN,
    PLACES_ZH,
    SHAPES,
    SHAPES_ZH,
    SceneObject,
    ShapeScene,
    caption_for,
    shape_scene,
    split_seed,
)
from vlstack.errors import CheckpointError, ConfigError, DataError, InputError, VlstackError
from vlstack.eval.metrics import pope_metrics
from vlstack.infer.engine import Engine, Request
from vlstack.models.vlm import QwenImageModel
from vlstack.progress import progress_bar

# --- Lexicon ------------------------------------------------------------------------------------------

SHAPE_SYNONYMS = {"circle": ["disc", "disk", "dot", "圆圈", "圆"], "square": ["方块"], "triangle": ["三角"]}
"""Synonyms of the scene shapes beyond their names (English plurals are derived). "方形" is left out:
it is also the tail of "长方形" (rectangle)."""
COLOR_SYNONYMS = {"red": ["crimson", "scarlet", "红"], "green": ["绿"], "blue": ["蓝"], "yellow": ["黄"],
                  "purple": ["violet", "紫"], "orange": ["橘色", "橘黄色", "橙"]}
PLACE_SYNONYMS = {"left": ["左侧", "左面"], "right": ["右侧", "右面"], "center": ["centre", "middle", "中央", "中心"]}
GENERIC_NOUNS = ["shape", "object", "figure", "one", "thing", "item", "形状", "图形", "物体"]
"""Nouns that name no object: "the red one", "the shape on the left is red" still carry an attribute."""

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[a-z0-9]+(?:['’][a-z]+)?|\S", re.IGNORECASE)
"""A Chinese character, an English word (with its "n't"), or one other visible character."""
BOUNDARIES = frozenset(".,;:!?。，；：！？、") | {"and", "but", "or", "while", "whereas", "和", "与", "及", "或", "而", "但"}
"""Clause ends: an attribute never crosses one, and a negation's scope stops at one."""
NEGATIONS = frozenset({"no", "not", "without", "never", "none", "neither", "nor", "cannot", "没", "无", "不", "非", "未"})
COPULAS = frozenset({"is", "are", "was", "were", "be", "looks", "look", "appears", "appear", "seems", "是", "为"})
FILLERS = frozenset({"a", "an", "the", "-", "colored", "coloured", "shaped", "的", "个", "只"})
"""Words that may stand between attributes and their noun without ending the phrase."""

Kind = Literal["object", "attribute", "place", "generic"]


class Lexicon:
    """Surface forms (English and Chinese, plurals included) -> (kind, canonical name).

    Each group is a list whose first entry is the canonical name, as in chair.py's
    synonyms.txt; English plurals of every single word are added. A text is matched
    longest form first, so "正方形" is a square before "方" could be anything else.
    """

    def __init__(self, groups: Mapping[Kind, Sequence[Sequence[str]]]):
        self.names: dict[str, list[str]] = {kind: [g[0] for g in groups.get(kind, [])] for kind in
                                            ("object", "attribute", "place", "generic")}
        self.forms: dict[tuple[str, ...], tuple[Kind, str]] = {}
        for kind, kind_groups in groups.items():
            for group in kind_groups:
                if not group:
                    raise ConfigError(f"an empty {kind} group in the lexicon; a group is [canonical name, synonyms...]")
                for surface in group:
                    for variant in {surface, *_plurals(surface)}:
                        self.forms[tuple(t.lower() for t in _TOKEN.findall(variant))] = (kind, group[0])
        self.longest = max(len(form) for form in self.forms)


def _plurals(surface: str) -> list[str]:
    """English plural of a single ASCII word ("circle" -> "circles", "box" -> "boxes"); none for others."""
    if not surface.isascii() or not surface.isalpha() or " " in surface:
        return []
    if surface.endswith(("s", "x", "z", "ch", "sh")):
        return [surface + "es"]
    if surface.endswith("y") and surface[-2:-1] not in "aeiou":
        return [surface[:-1] + "ies"]
    return [surface + "s"]


def scene_lexicon() -> Lexicon:
    """The synthetic scenes' vocabulary: shapes, colours and places in English and Chinese, with synonyms."""
    return Lexicon({
        "object": [[s, SHAPES_ZH[s], *SHAPE_SYNONYMS.get(s, [])] for s in SHAPES],
        "attribute": [[c, COLORS_ZH[c], *COLOR_SYNONYMS.get(c, [])] for c in COLORS],
        "place": [[p, PLACES_ZH[p], *PLACE_SYNONYMS.get(p, [])] for p in PLACES_EN],
        "generic": [GENERIC_NOUNS],
    })


LEXICON = scene_lexicon()


# --- Entity extraction --------------------------------------------------------------------------------

@dataclass
class Entity:
    """A noun phrase of a response, in canonical names."""

    text: str
    """The span of the response, as written."""
    object: str | None
    """The canonical object ("circle"); None for a generic noun or a bare predicate ("it is red")."""
    attributes: tuple[str, ...]
    place: str | None = None
    """Where the response puts it (left, right, center), when its clause says."""
    negated: bool = False
    """A negation before it in its clause: the response says it is not there."""
    start: int = 0
    end: int = 0

    @property
    def phrase(self) -> str:
        """Canonical English: attributes then the object ("red circle"; "red shape" without one)."""
        return " ".join([*self.attributes, self.object or "shape"])


@dataclass
class _Token:
    text: str
    kind: str
    """object | attribute | place | generic (lexicon), boundary | negation | copula | filler | word."""
    name: str
    start: int
    end: int


def extract_entities(text: str, lexicon: Lexicon = LEXICON) -> list[Entity]:
    """The object and attribute noun phrases of `text`, in order, negated ones included (flagged)."""
    entities: list[Entity] = []
    clause: list[_Token] = []
    for token in [*_tokens(text, lexicon), None]:
        if token is None or token.kind == "boundary":
            entities += _parse_clause(clause, text)
            clause = []
        else:
            clause.append(token)
    return entities


def _tokens(text: str, lexicon: Lexicon) -> list[_Token]:
    """Words and characters, with the longest lexicon form at each position merged into one token."""
    raw = list(_TOKEN.finditer(text))
    words = [m.group().lower() for m in raw]
    tokens, i = [], 0
    while i < len(raw):
        for n in range(min(lexicon.longest, len(raw) - i), 0, -1):
            hit = lexicon.forms.get(tuple(words[i : i + n]))
            if hit:
                kind, name = hit
                break
        else:
            n, kind, name = 1, _word_kind(words[i]), words[i]
        start, end = raw[i].start(), raw[i + n - 1].end()
        tokens.append(_Token(text[start:end], kind, name, start, end))
        i += n
    return tokens


def _word_kind(word: str) -> str:
    """The role of a word the lexicon does not know."""
    if word in BOUNDARIES:
        return "boundary"
    if word in NEGATIONS or word.endswith(("n't", "n’t")):
        return "negation"
    if word in COPULAS:
        return "copula"
    return "filler" if word in FILLERS else "word"


def _parse_clause(tokens: list[_Token], text: str) -> list[Entity]:
    """Entities of one clause: attributes attach to the next noun, or after a copula to the previous one."""
    entities: list[Entity] = []
    pending: list[_Token] = []  # attributes waiting for their noun
    negated = negated_since_last = copula = False
    waiting_place: str | None = None  # a place said before its entity ("左边是一个红色的圆形")
    for token in tokens:
        if token.kind == "negation":
            negated = negated_since_last = True
        elif token.kind == "attribute":
            pending.append(token)
        elif token.kind in ("object", "generic"):
            start = pending[0].start if pending else token.start
            entities.append(Entity(text[start:token.end], token.name if token.kind == "object" else None,
                                   tuple(p.name for p in pending), waiting_place, negated, start, token.end))
            pending, waiting_place, negated_since_last, copula = [], None, False, False
        elif token.kind == "place":
            if entities and entities[-1].place is None:
                entities[-1].place = token.name
            else:
                waiting_place = token.name
        elif token.kind == "copula":
            copula, pending = True, []
        elif token.kind == "word":
            pending = []  # the attributes describe a noun the lexicon does not know ("a white background")
    if pending and copula:  # a predicate: "the circle is red", "圆形是红色的", "it is red"
        names = tuple(p.name for p in pending)
        if entities and not negated_since_last:
            last = entities[-1]
            last.attributes += names
            last.end = pending[-1].end
            last.text = text[last.start : last.end]
        elif not entities:
            start = pending[0].start
            entities.append(Entity(text[start : pending[-1].end], None, names, waiting_place, negated, start,
                                   pending[-1].end))
    return [e for e in entities if e.object or e.attributes]


def render(entities: Sequence[Entity]) -> str:
    """Entities in the caption grammar of the synthetic scenes ("a red circle on the left and a ...")."""
    return " and ".join(f"a {e.phrase}" + (f" {PLACES_EN[e.place]}" if e.place in PLACES_EN else "")
                        for e in entities)


# --- Detector ------------------------------------------------------------------------------------------

LABELS = ("hallucination", "uncertain", "reliable")
"""From worst to best; a higher score never gets an earlier label."""
SEED_THRESHOLDS = (0.15, 0.3)
"""The seed's thresholds: below 0.15 hallucination, above 0.3 reliable."""
CALIBRATION_FILE = "hallucination_calibration.json"
SCORER = "itc-contrast-v1"
"""The score the thresholds are fitted for; a calibration for another scorer is not used."""


@dataclass
class Calibration:
    """Thresholds of the detector's labels, fitted for one scorer; stored beside the checkpoint's weights."""

    low: float = SEED_THRESHOLDS[0]
    """A score below this is a hallucination."""
    high: float = SEED_THRESHOLDS[1]
    """A score above this is reliable; in between, uncertain."""
    fitted: bool = False
    """False: the seed's thresholds, not fitted for this model."""
    scorer: str = SCORER
    error_rate: float | None = None
    """Target share of faithful entities labelled hallucination, and of hallucinated ones labelled reliable."""
    auroc: float | None = None
    """Entity-level AUROC on the data the thresholds were fitted on."""
    faithful: int = 0
    hallucinated: int = 0

    def label(self, score: float) -> str:
        return LABELS[0] if score < self.low else LABELS[2] if score > self.high else LABELS[1]

    def save(self, directory: str | Path) -> Path:
        """Write `directory/hallucination_calibration.json` (atomically: a temp file, then a rename)."""
        path = Path(directory) / CALIBRATION_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(to_dict(self), indent=1), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Calibration:
        """The calibration stored in a checkpoint directory; the seed's thresholds when there is none."""
        path = Path(directory) / CALIBRATION_FILE
        if not path.is_file():
            return cls()
        try:
            calibration = from_dict(cls, json.loads(path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, ConfigError) as error:
            raise CheckpointError(f"{path} is not a valid calibration ({error}); delete it or recalibrate with "
                                  "`vlstack eval --model CKPT --hallucination`") from None
        if calibration.scorer != SCORER:
            raise CheckpointError(f"{path} was fitted for scorer {calibration.scorer!r}, this vlstack scores with "
                                  f"{SCORER!r}; recalibrate with `vlstack eval --model CKPT --hallucination`")
        return calibration


def fit_calibration(faithful: Sequence[float], hallucinated: Sequence[float], error_rate: float = 0.05
                    ) -> Calibration:
    """Thresholds from held-out scores of faithful and hallucinated entities.

    `low` labels at most `error_rate` of the faithful entities as hallucinations, and
    `high` lets at most `error_rate` of the hallucinated ones through as reliable. When
    they cross (the scores separate better than the error rate asks), both become their
    midpoint, which keeps both guarantees, and nothing is uncertain.
    """
    if not faithful or not hallucinated:
        raise DataError(f"calibration needs scores of both kinds: {len(faithful)} faithful, "
                        f"{len(hallucinated)} hallucinated")
    if not 0.0 <= error_rate < 1.0:
        raise ConfigError(f"'error_rate' must be in [0, 1), got {error_rate}")
    good, bad = sorted(faithful), sorted(hallucinated)
    low = good[math.floor(error_rate * len(good))]  # at most error_rate of `good` lie strictly below
    high = bad[len(bad) - 1 - math.floor(error_rate * len(bad))]  # at most error_rate of `bad` lie strictly above
    if low > high:
        low = high = (low + high) / 2
    return Calibration(low, high, True, SCORER, error_rate, auroc(faithful, hallucinated), len(good), len(bad))


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """The probability that a random positive scores above a random negative, ties counting half
    (the area under the ROC curve, as the Mann-Whitney U statistic)."""
    if not positive or not negative:
        raise DataError(f"AUROC needs both classes: {len(positive)} positive, {len(negative)} negative")
    values = sorted([(v, 1) for v in positive] + [(v, 0) for v in negative])
    rank_sum, i = 0.0, 0
    while i < len(values):  # average ranks over ties
        j = i
        while j < len(values) and values[j][0] == values[i][0]:
            j += 1
        rank_sum += sum(label for _, label in values[i:j]) * (i + j + 1) / 2
        i = j
    n_pos, n_neg = len(positive), len(negative)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@dataclass
class Detection:
    entity: Entity
    score: float
    """The lower of `parts`: an entity is as reliable as its weakest part."""
    parts: dict[str, float]
    """"attribute" and/or "object": the probability of the entity's own attribute (object) against every
    other one of the lexicon, in context, from ITC cosines (chance: 1 / number of attributes (objects))."""
    label: str


class HallucinationDetector:
    """Entity-level hallucination detection with a model's ITC embeddings (see the module docstring)."""

    def __init__(self, model: QwenImageModel, tokenizer: PreTrainedTokenizerBase,
                 calibration: Calibration | None = None, lexicon: Lexicon = LEXICON):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.calibration = calibration or Calibration()
        self.lexicon = lexicon
        self.device = next(model.parameters()).device

    @classmethod
    def from_checkpoint(cls, directory: str | Path) -> HallucinationDetector:
        """The checkpoint's model and tokenizer, with its stored calibration (the seed's thresholds if none)."""
        engine = Engine.from_checkpoint(directory)
        return cls(engine.model, engine.tokenizer, Calibration.load(directory))

    def detect(self, response: str, image: Image.Image) -> list[Detection]:
        """Score and label every entity `response` claims (negated ones are left out)."""
        return self.detect_batch([response], [image])[0]

    def detect_batch(self, responses: Sequence[str], images: Sequence[Image.Image]) -> list[list[Detection]]:
        if len(responses) != len(images):
            raise InputError(f"{len(responses)} responses but {len(images)} images; give one image per response")
        return self.detect_embedded(responses, self.image_embeddings(images))

    @torch.no_grad()
    def detect_embedded(self, responses: Sequence[str], image_embeds: torch.Tensor) -> list[list[Detection]]:
        """`detect_batch` with the images' ITC embeddings [N, E] given (`image_embeddings`), to reuse them."""
        claimed = [[e for e in extract_entities(r, self.lexicon) if not e.negated] for r in responses]
        detections = []
        for entities, parts in zip(claimed, self.score(claimed, image_embeds)):
            scores = [min(p.values()) for p in parts]
            detections.append([Detection(e, score, p, self.calibration.label(score))
                               for e, score, p in zip(entities, scores, parts)])
        return detections

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Normalised ITC embeddings [N, E] of PIL images."""
        pixels = torch.stack([image_to_tensor(image, self.model.config.vision.image_size) for image in images])
        return self.model.image_embedding(self.model.encode_image(pixels.to(self.device))).float()

    @torch.no_grad()
    def score(self, claims: Sequence[Sequence[Entity]], image_embeds: torch.Tensor) -> list[list[dict[str, float]]]:
        """For each response's entities (with its image's embedding, a row of [N, E]), the probability
        of each part of each entity: the softmax, at the ITC temperature, of the image's cosine with
        the response's caption among the captions with that part swapped (`contrasts`)."""
        contrasts = [[self.contrasts(entities, i) for i in range(len(entities))] for entities in claims]
        texts = list(dict.fromkeys(t for response in contrasts for entity in response for captions in entity.values()
                                   for t in captions))
        embeds = self.text_embeddings(texts)  # [U, E]
        row = {text: i for i, text in enumerate(texts)}
        inverse_temperature = 1.0 / float(self.model.itc.temperature)
        return [[{part: float((embeds[[row[t] for t in captions]] @ image_embed * inverse_temperature).softmax(0)[0])
                  for part, captions in entity.items()} for entity in response]
                for response, image_embed in zip(contrasts, image_embeds)]

    def contrasts(self, entities: Sequence[Entity], i: int) -> dict[str, list[str]]:
        """Entity i's contrast sets: all entities rendered as a caption, original first, then with entity i's
        attributes swapped for each other attribute of the lexicon ("attribute", when it has attributes)
        or its object for each other object ("object", when it has one)."""
        entity = entities[i]
        swaps: dict[str, list[Entity]] = {}
        if entity.attributes:
            swaps["attribute"] = [dataclasses.replace(entity, attributes=(a,)) for a in self.lexicon.names["attribute"]
                                  if (a,) != entity.attributes]
        if entity.object:
            swaps["object"] = [dataclasses.replace(entity, object=o) for o in self.lexicon.names["object"]
                               if o != entity.object]
        return {part: [render(entities)] + [render([*entities[:i], other, *entities[i + 1:]]) for other in others]
                for part, others in swaps.items()}

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Normalised ITC embeddings [N, E] of texts, `batch_size` at a time."""
        limit = self.model.config.language.max_positions
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = tokenize_texts(self.tokenizer, texts[start : start + batch_size], limit, truncate=True)
            ids, mask = batch.input_ids.to(self.device), batch.attention_mask.to(self.device)
            chunks.append(self.model.text_embedding(self.model.encode_text(ids, mask), mask).float())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.model.config.itc_dim, device=self.device)


# --- Synthetic faithful vs hallucinated captions ------------------------------------------------------

def hallucinate(objects: Sequence[SceneObject], rng: random.Random) -> tuple[list[SceneObject], int, str]:
    """The objects with one of them changed to something the image does not show: its colour for a
    colour no object has, or its shape for a shape no object has (half each). Returns the new
    objects, the index changed and what changed ("color" or "shape")."""
    index = rng.randrange(len(objects))
    colors = [c for c in COLORS if c not in {o.color for o in objects}]
    shapes = [s for s in SHAPES if s not in {o.shape for o in objects}]
    kind = "color" if not shapes or rng.random() < 0.5 else "shape"
    target = objects[index]
    changed = (dataclasses.replace(target, color=rng.choice(colors)) if kind == "color"
               else dataclasses.replace(target, shape=rng.choice(shapes)))
    return [changed if i == index else o for i, o in enumerate(objects)], index, kind


# --- POPE: AoiDragon/POPE utils.py ---------------------------------------------------------------------

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


# --- CHAIR: LisaAnne/Hallucination utils/chair.py ------------------------------------------------------

def chair(captions: Sequence[str], ground_truth: Sequence[Iterable[str]], lexicon: Lexicon = LEXICON
          ) -> dict[str, Any]:
    """CHAIR_s (captions with a hallucinated object / captions) and CHAIR_i (hallucinated object
    mentions / object mentions) of captions against each image's objects (canonical names).

    As chair.py: every mention counts, repeated or negated ("no dog" mentions a dog), and a
    mention is mapped to its canonical object through the synonym list (`lexicon`) before it
    is compared. chair.py singularises words with `pattern`; the lexicon lists the plurals
    instead. Where chair.py divides by zero (no object mentioned anywhere), CHAIR_i is 0.
    """
    if len(captions) != len(ground_truth):
        raise DataError(f"CHAIR needs one ground-truth object list per caption: {len(captions)} captions, "
                        f"{len(ground_truth)} lists")
    known = set(lexicon.names["object"])
    sentences, mentions, hallucinated = [], 0, 0
    for caption, objects in zip(captions, ground_truth):
        truth = set(objects)
        unknown = sorted(truth - known)
        if unknown:
            raise DataError(f"CHAIR: ground-truth objects {unknown} are not in the lexicon's objects "
                            f"({', '.join(sorted(known))}); a caption could never match them")
        words = [e.object for e in extract_entities(caption, lexicon) if e.object]
        wrong = [w for w in words if w not in truth]
        mentions += len(words)
        hallucinated += len(wrong)
        sentences.append({"caption": caption, "objects": sorted(truth), "mentioned": words, "hallucinated": wrong,
                          "chair_s": float(bool(wrong)), "chair_i": len(wrong) / len(words) if words else 0.0})
    return {"chair_s": sum(s["chair_s"] for s in sentences) / len(sentences) if sentences else 0.0,
            "chair_i": hallucinated / mentions if mentions else 0.0,
            "captions": len(sentences), "mentions": mentions, "hallucinated_mentions": hallucinated,
            "sentences": sentences}


# --- The evaluation on synthetic scenes -----------------------------------------------------------------

SCENE_STREAM = 5_000_000
"""Scene-index offset of the hallucination scenes: no pretraining corpus or eval suite draws these."""


@dataclass
class HallucinationConfig:
    """Hallucination evaluation on held-out synthetic shape scenes with known objects."""

    calibration_scenes: int = 200
    """Scenes (split "val") whose faithful and hallucinated captions fit the detector's thresholds."""
    test_scenes: int = 200
    """Scenes (split "test") for the detector's AUROC, faithful caption vs one with a swapped object/colour."""
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])
    """Caption languages the detector is tested on (it calibrates on English)."""
    calibrate: bool = True
    """Fit the thresholds (and store them in the checkpoint); False keeps the stored ones (or the seed's)."""
    error_rate: float = 0.05
    """Calibration target: faithful entities labelled hallucination, hallucinated ones labelled reliable."""
    pope_scenes: int = 50
    """Test scenes with at least `pope_sample_num` different objects to ask POPE questions about."""
    pope_sample_num: int = 2
    """Positive (and as many negative) questions per scene; POPE uses 3 on COCO, our scenes hold at most 2."""
    chair_scenes: int = 50
    """Test scenes the model captions for CHAIR."""
    caption_prompt: str = "Describe the image."
    caption_max_new_tokens: int = 32
    answer_max_new_tokens: int = 8
    examples: int = 3
    """Examples kept per section for the report."""
    seed: int = 0

    @classmethod
    def quick(cls) -> HallucinationConfig:
        """A few seconds on a tiny model (the quick demo): fewer scenes, English only, short replies."""
        return cls(calibration_scenes=60, test_scenes=60, languages=["en"], pope_scenes=6, chair_scenes=6,
                   caption_max_new_tokens=24, answer_max_new_tokens=4)

    def __post_init__(self) -> None:
        bad = [lang for lang in self.languages if lang not in ("en", "zh")]
        if bad:
            raise ConfigError(f"'languages' may hold en and zh, got {bad}")
        for name in ("calibration_scenes", "test_scenes", "pope_scenes", "pope_sample_num", "chair_scenes",
                     "caption_max_new_tokens", "answer_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"'{name}' must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.error_rate < 1.0:
            raise ConfigError(f"'error_rate' must be in [0, 1), got {self.error_rate}")
        if self.pope_sample_num > 2:
            raise ConfigError(f"'pope_sample_num' is {self.pope_sample_num}, but a synthetic scene holds at most "
                              "2 objects")


def run_hallucination(model: Engine | str | Path, config: HallucinationConfig, out_dir: str | Path | None = None,
                      checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Calibrate the detector and measure its AUROC, then POPE and CHAIR through the Engine.

    `model` is an Engine or a checkpoint directory; the calibration is read from and
    written to `checkpoint` (by default the directory `model` names). With `out_dir`, the
    POPE files (probes, answers, images, in POPE's formats) and `hallucination.json` go there.
    """
    started = time.perf_counter()
    engine = model if isinstance(model, Engine) else Engine.from_checkpoint(model)
    if checkpoint is None and not isinstance(model, Engine):
        checkpoint = model
    detector = HallucinationDetector(engine.model, engine.tokenizer,
                                     Calibration.load(checkpoint) if checkpoint is not None else None)
    out = Path(out_dir) if out_dir is not None else None
    results: dict[str, Any] = {"config": to_dict(config)}
    with progress_bar() as progress:
        if config.calibrate:
            scores = _entity_scores(detector, _pairs(config, "val", config.calibration_scenes), ["en"], progress,
                                    "calibrate detector")["en"]
            detector.calibration = fit_calibration(scores.faithful, scores.changed, config.error_rate)
            if checkpoint is not None:
                detector.calibration.save(checkpoint)
        results["detector"] = evaluate_detector(detector, config, progress)
        results["pope"] = evaluate_pope(engine, config, out, progress)
        results["chair"] = evaluate_chair(engine, detector, config, progress)
    results["seconds"] = round(time.perf_counter() - started, 2)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "hallucination.json").write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    return results


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of `run_hallucination`'s results: detector AUROC (overall and per kind of
    swap), thresholds, label counts, POPE per setting, CHAIR."""
    detector, chair_results = results["detector"], results["chair"]
    first = next(iter(detector["languages"].values()))
    return {
        "auroc": detector["auroc"], "auroc_by_change": first["auroc_by_change"],
        "thresholds": {k: detector["calibration"][k] for k in ("low", "high", "fitted")},
        "labels": first["labels"],
        "pope": {setting: {k: m[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio", "questions")}
                 for setting, m in results["pope"].items()},
        "chair": {k: chair_results[k] for k in ("chair_s", "chair_i", "captions", "mentions")},
        "seconds": results["seconds"],
    }


@dataclass
class _Pair:
    """A scene, its objects after one was changed (`index`, `kind`), for faithful vs hallucinated captions."""

    image: Image.Image
    objects: list[SceneObject]
    changed: list[SceneObject]
    index: int
    kind: str


def _scenes(config: HallucinationConfig, split: str, n: int) -> list[ShapeScene]:
    seed = split_seed(config.seed, split)
    return [shape_scene(seed, SCENE_STREAM + i) for i in range(n)]


def _pairs(config: HallucinationConfig, split: str, n: int) -> list[_Pair]:
    rng = random.Random(f"hallucinate:{config.seed}:{split}")
    pairs = []
    for scene in _scenes(config, split, n):
        changed, index, kind = hallucinate(scene.objects, rng)
        pairs.append(_Pair(scene.image, scene.objects, changed, index, kind))
    return pairs


@dataclass
class _Scores:
    """Detector scores of faithful vs hallucinated synthetic captions."""

    faithful: list[float] = field(default_factory=list)
    """Every entity of the faithful captions."""
    changed: list[float] = field(default_factory=list)
    """The changed entity of each hallucinated caption."""
    faithful_captions: list[float] = field(default_factory=list)
    """Each faithful caption's lowest entity score."""
    hallucinated_captions: list[float] = field(default_factory=list)


def _entity_scores(detector: HallucinationDetector, pairs: list[_Pair], languages: Sequence[str], progress,
                   description: str, batch_size: int = 32) -> dict[str, _Scores]:
    """Scores of each pair's faithful and hallucinated caption, per language (each image is embedded once)."""
    scores = {lang: _Scores() for lang in languages}
    task = progress.add_task(description, total=len(pairs))
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        image_embeds = detector.image_embeddings([p.image for p in chunk])  # [n, E]
        for lang, into in scores.items():
            captions = [caption_for(p.objects, lang) for p in chunk] + [caption_for(p.changed, lang) for p in chunk]
            detections = detector.detect_embedded(captions, torch.cat([image_embeds, image_embeds]))
            for pair, good, bad in zip(chunk, detections[: len(chunk)], detections[len(chunk) :]):
                if len(good) != len(pair.objects) or len(bad) != len(pair.changed):
                    raise VlstackError(f"entity extraction found {len(good)} / {len(bad)} entities in synthetic "
                                       f"captions of {len(pair.objects)} objects; the lexicon no longer covers the "
                                       "scene vocabulary")
                into.faithful += [d.score for d in good]
                into.changed.append(bad[pair.index].score)
                into.faithful_captions.append(min(d.score for d in good))
                into.hallucinated_captions.append(min(d.score for d in bad))
        progress.update(task, advance=len(chunk))
    return scores


def evaluate_detector(detector: HallucinationDetector, config: HallucinationConfig, progress) -> dict[str, Any]:
    """AUROC of faithful vs hallucinated captions (and entities) on the test scenes, per language,
    with the label counts of faithful and of hallucinated entities."""
    pairs = _pairs(config, "test", config.test_scenes)
    label = detector.calibration.label
    languages = {}
    for lang, scores in _entity_scores(detector, pairs, config.languages, progress, "detector AUROC").items():
        good, bad = scores.faithful_captions, scores.hallucinated_captions
        by_kind = {kind: auroc(good, [s for s, p in zip(bad, pairs) if p.kind == kind])
                   for kind in sorted({p.kind for p in pairs})}
        languages[lang] = {
            "auroc": auroc(good, bad), "entity_auroc": auroc(scores.faithful, scores.changed),
            "auroc_by_change": by_kind,
            "labels": {"faithful": _label_counts(map(label, scores.faithful)),
                       "hallucinated": _label_counts(map(label, scores.changed))},
        }
    examples = []
    for pair in pairs[: config.examples]:
        caption = caption_for(pair.changed, config.languages[0])
        examples.append({"truth": caption_for(pair.objects, config.languages[0]), "caption": caption,
                         "entities": [{"text": d.entity.text, "score": round(d.score, 4), "label": d.label,
                                       "parts": {k: round(v, 4) for k, v in d.parts.items()}}
                                      for d in detector.detect(caption, pair.image)]})
    first = languages[config.languages[0]]
    return {"auroc": first["auroc"], "entity_auroc": first["entity_auroc"],
            "calibration": to_dict(detector.calibration), "scenes": len(pairs), "languages": languages,
            "examples": examples}


def evaluate_pope(engine: Engine, config: HallucinationConfig, out: Path | None, progress) -> dict[str, Any]:
    """POPE's three settings on test scenes with enough objects; the probe and answer files go to `out/pope`."""
    scenes, images = _pope_scenes(config)
    if out is not None:
        (out / "pope" / "images").mkdir(parents=True, exist_ok=True)
        for name, image in images.items():
            image.save(out / "pope" / "images" / name)
    results = {}
    replies: dict[tuple[str, str], str] = {}  # (question, image) -> reply: the settings share their positives
    for setting in POPE_SETTINGS:
        probes = pope_probes(scenes, setting, config.pope_sample_num, config.seed)
        new = list(dict.fromkeys((p.text, p.image) for p in probes if (p.text, p.image) not in replies))
        replies.update(zip(new, _generate(engine, [(text, images[image]) for text, image in new],
                                          config.answer_max_new_tokens, config.seed, progress, f"POPE {setting}")))
        answers = [replies[p.text, p.image] for p in probes]
        metrics = pope_metrics(answers, [p.label for p in probes])
        results[setting] = {**metrics, "questions": len(probes), "images": len(scenes),
                            "examples": [{"question": p.text, "label": p.label, "answer": a}
                                         for p, a in list(zip(probes, answers))[: config.examples]]}
        if out is not None:
            _write_lines(out / "pope" / f"synthetic_pope_{setting}.json", [p.to_json() for p in probes])
            _write_lines(out / "pope" / f"synthetic_pope_{setting}_answers.json",
                         [{"question_id": p.question_id, "question": p.text, "answer": a}
                          for p, a in zip(probes, answers)])
    return results


def _pope_scenes(config: HallucinationConfig) -> tuple[dict[str, list[str]], dict[str, Image.Image]]:
    """The first `pope_scenes` test scenes with `pope_sample_num` different objects: their objects ("red
    circle") and their images, by image name."""
    objects: dict[str, list[str]] = {}
    images: dict[str, Image.Image] = {}
    seed, index = split_seed(config.seed, "test"), 0
    while len(objects) < config.pope_scenes:
        scene = shape_scene(seed, SCENE_STREAM + index)
        names = list(dict.fromkeys(f"{o.color} {o.shape}" for o in scene.objects))
        if len(names) >= config.pope_sample_num:
            objects[f"scene-{index:06d}.png"], images[f"scene-{index:06d}.png"] = names, scene.image
        index += 1
    return objects, images


def evaluate_chair(engine: Engine, detector: HallucinationDetector, config: HallucinationConfig, progress
                   ) -> dict[str, Any]:
    """CHAIR of the model's captions of test scenes, with the detector's labels on their entities, beside
    CHAIR of the true captions and of captions with a swapped object (which check the metric itself)."""
    pairs = _pairs(config, "test", config.chair_scenes)
    truth = [{o.shape for o in p.objects} for p in pairs]
    captions = _generate(engine, [(config.caption_prompt, p.image) for p in pairs], config.caption_max_new_tokens,
                         config.seed, progress, "CHAIR captions")
    model = chair(captions, truth, detector.lexicon)
    detections = detector.detect_batch(captions, [p.image for p in pairs])
    model["detector_labels"] = _label_counts(d.label for row in detections for d in row)
    model["sentences"] = model["sentences"][: config.examples]
    references = {}
    for name, objects in (("true captions", [p.objects for p in pairs]),
                          ("swapped captions", [p.changed for p in pairs])):
        scored = chair([caption_for(o) for o in objects], truth, detector.lexicon)
        references[name] = {k: scored[k] for k in ("chair_s", "chair_i", "mentions", "hallucinated_mentions")}
    return {**model, "references": references}


def _generate(engine: Engine, prompts: list[tuple[str, Image.Image]], max_new_tokens: int, seed: int, progress,
              description: str) -> list[str]:
    """The Engine's replies to (question, image) prompts, a batch at a time."""
    task = progress.add_task(description, total=len(prompts))
    replies = []
    size = engine.config.max_batch_size
    for start in range(0, len(prompts), size):
        requests = [Request.ask(question, image, max_new_tokens=max_new_tokens, seed=seed)
                    for question, image in prompts[start : start + size]]
        replies += [result.text for result in engine.generate(requests)]
        progress.update(task, advance=len(requests))
    return replies


def _label_counts(labels: Iterable[str]) -> dict[str, int]:
    counts = Counter(labels)
    return {label: counts[label] for label in LABELS}


def _write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    """JSON lines, as POPE's files are (one object per line, despite the .json name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
