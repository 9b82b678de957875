"""The article's entity-level detector: ITC scores in context, calibrated thresholds stored with the
checkpoint, labels reliable / uncertain / hallucination.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from vlstack.config import from_dict, to_dict
from vlstack.data.collate import image_to_tensor, tokenize_texts
from vlstack.errors import CheckpointError, ConfigError, DataError, InputError
from vlstack.eval.hallucination.entities import (
    Entity,
    Lexicon,
    extract_entities,
    render,
)
from vlstack.files import write_json
from vlstack.infer.engine import Engine
from vlstack.models.vlm import QwenImageModel

LABELS = ("hallucination", "uncertain", "reliable")
"""From worst to best; a higher score never gets an earlier label."""
ARTICLE_THRESHOLDS = (0.15, 0.3)
"""The article's thresholds: below 0.15 hallucination, above 0.3 reliable."""
CALIBRATION_FILE = "hallucination_calibration.json"
SCORER = "itc-contrast-v1"
"""The score the thresholds are fitted for; a calibration for another scorer is not used."""


@dataclass
class Calibration:
    """Thresholds of the detector's labels, fitted for one scorer; stored beside the checkpoint's weights."""

    low: float = ARTICLE_THRESHOLDS[0]
    """A score below this is a hallucination."""
    high: float = ARTICLE_THRESHOLDS[1]
    """A score above this is reliable; in between, uncertain."""
    fitted: bool = False
    """False: the article's thresholds, not fitted for this model."""
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
        return write_json(Path(directory) / CALIBRATION_FILE, to_dict(self))

    @classmethod
    def load(cls, directory: str | Path) -> Calibration:
        """The calibration stored in a checkpoint directory; the article's thresholds when there is none."""
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
                 lexicon: Lexicon, calibration: Calibration | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.calibration = calibration or Calibration()
        self.lexicon = lexicon
        self.device = next(model.parameters()).device

    @classmethod
    def from_checkpoint(cls, directory: str | Path, lexicon: Lexicon) -> HallucinationDetector:
        """The checkpoint's model and tokenizer, with its stored calibration (the article's thresholds if none)."""
        engine = Engine.from_checkpoint(directory)
        return cls(engine.model, engine.tokenizer, lexicon, Calibration.load(directory))

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
        pixels = torch.stack([image_to_tensor(image, self.model.config.vision) for image in images])
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
        return {part: [render(entities, self.lexicon)] + [render([*entities[:i], other, *entities[i + 1:]], self.lexicon)
                                                          for other in others]
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
