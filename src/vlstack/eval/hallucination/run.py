"""The hallucination evaluation on a suite of scenes with known objects (`suite.py`): calibrate and
score the detector, then POPE and CHAIR through the Engine (`run_hallucination`, `summarize`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlstack.config import to_dict
from vlstack.errors import ConfigError, VlstackError
from vlstack.eval.hallucination.chair import chair
from vlstack.eval.hallucination.detector import (
    LABELS,
    Calibration,
    HallucinationDetector,
    auroc,
    fit_calibration,
)
from vlstack.eval.hallucination.pope import POPE_SETTINGS, pope_probes
from vlstack.eval.hallucination.suite import Scene, Suite, read_suite
from vlstack.eval.metrics import pope_metrics
from vlstack.files import write_json, write_jsonl
from vlstack.infer.engine import Engine, Request
from vlstack.progress import progress_bar


@dataclass
class HallucinationConfig:
    """Hallucination evaluation on a suite of scenes with known objects (`suite.py`)."""

    data: str | None = None
    """The suite folder (`lexicon.json`, `scenes.jsonl`, images); `vlstack data synth-eval OUT` writes a
    synthetic one to OUT/hallucination. None: `hallucination/` under `vlstack eval`'s data root."""
    calibration_scenes: int = 200
    """Scenes (split "val") whose faithful and hallucinated captions fit the detector's thresholds."""
    test_scenes: int = 200
    """Scenes (split "test") for the detector's AUROC, faithful caption vs one with a swapped object/colour."""
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])
    """Caption languages the detector is tested on (it calibrates on English)."""
    calibrate: bool = True
    """Fit the thresholds (and store them in the checkpoint); False keeps the stored ones (or the article's)."""
    error_rate: float = 0.05
    """Calibration target: faithful entities labelled hallucination, hallucinated ones labelled reliable."""
    pope_scenes: int = 50
    """Test scenes with at least `pope_sample_num` different objects to ask POPE questions about."""
    pope_sample_num: int = 2
    """Positive (and as many negative) questions per scene; POPE uses 3 on COCO, shape scenes hold at most 2."""
    chair_scenes: int = 50
    """Test scenes the model captions for CHAIR."""
    caption_prompt: str = "Describe the image."
    caption_max_new_tokens: int = 32
    answer_max_new_tokens: int = 8
    examples: int = 3
    """Examples kept per section for the report."""
    seed: int = 0

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


def run_hallucination(model: Engine | str | Path, config: HallucinationConfig, out_dir: str | Path | None = None,
                      checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Calibrate the detector and measure its AUROC, then POPE and CHAIR through the Engine.

    `model` is an Engine or a checkpoint directory; the calibration is read from and
    written to `checkpoint` (by default the directory `model` names). With `out_dir`, the
    POPE files (probes, answers, images, in POPE's formats) and `hallucination.json` go there.
    """
    started = time.perf_counter()
    if config.data is None:
        raise ConfigError("hallucination.data is not set: point it at a hallucination suite folder "
                          "(`vlstack data synth-eval OUT` writes a synthetic one to OUT/hallucination)")
    suite = read_suite(config.data)
    engine = model if isinstance(model, Engine) else Engine.from_checkpoint(model)
    if checkpoint is None and not isinstance(model, Engine):
        checkpoint = model
    detector = HallucinationDetector(engine.model, engine.tokenizer, suite.lexicon,
                                     Calibration.load(checkpoint) if checkpoint is not None else None)
    out = Path(out_dir) if out_dir is not None else None
    results: dict[str, Any] = {"config": to_dict(config)}
    with progress_bar() as progress:
        if config.calibrate:
            scores = _entity_scores(detector, suite, suite.split("val", config.calibration_scenes), ["en"], progress,
                                    "calibrate detector")["en"]
            detector.calibration = fit_calibration(scores.faithful, scores.changed, config.error_rate)
            if checkpoint is not None:
                detector.calibration.save(checkpoint)
        results["detector"] = evaluate_detector(detector, suite, config, progress)
        results["pope"] = evaluate_pope(engine, suite, config, out, progress)
        results["chair"] = evaluate_chair(engine, detector, suite, config, progress)
    results["seconds"] = round(time.perf_counter() - started, 2)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "hallucination.json", results)
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
class _Scores:
    """Detector scores of faithful vs hallucinated synthetic captions."""

    faithful: list[float] = field(default_factory=list)
    """Every entity of the faithful captions."""
    changed: list[float] = field(default_factory=list)
    """The changed entity of each hallucinated caption."""
    faithful_captions: list[float] = field(default_factory=list)
    """Each faithful caption's lowest entity score."""
    hallucinated_captions: list[float] = field(default_factory=list)


def _entity_scores(detector: HallucinationDetector, suite: Suite, scenes: list[Scene], languages: Sequence[str],
                   progress, description: str, batch_size: int = 32) -> dict[str, _Scores]:
    """Scores of each scene's faithful and hallucinated caption, per language (each image is embedded once)."""
    missing = sorted({lang for s in scenes for lang in languages if lang not in s.captions})
    if missing:
        raise ConfigError(f"languages {missing} have no captions in the suite {suite.root}; choose among those it has")
    scores = {lang: _Scores() for lang in languages}
    task = progress.add_task(description, total=len(scenes))
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        image_embeds = detector.image_embeddings([s.load_image(suite.root) for s in chunk])  # [n, E]
        for lang, into in scores.items():
            captions = [s.captions[lang][0] for s in chunk] + [s.captions[lang][1] for s in chunk]
            detections = detector.detect_embedded(captions, torch.cat([image_embeds, image_embeds]))
            for scene, good, bad in zip(chunk, detections[: len(chunk)], detections[len(chunk) :]):
                if len(good) != len(scene.objects) or len(bad) != len(scene.objects):
                    raise VlstackError(f"entity extraction found {len(good)} / {len(bad)} entities in the captions of "
                                       f"{scene.image}, which has {len(scene.objects)} objects; the suite's lexicon "
                                       "does not cover its captions")
                into.faithful += [d.score for d in good]
                into.changed.append(bad[scene.changed].score)
                into.faithful_captions.append(min(d.score for d in good))
                into.hallucinated_captions.append(min(d.score for d in bad))
        progress.update(task, advance=len(chunk))
    return scores


def evaluate_detector(detector: HallucinationDetector, suite: Suite, config: HallucinationConfig, progress
                      ) -> dict[str, Any]:
    """AUROC of faithful vs hallucinated captions (and entities) on the test scenes, per language,
    with the label counts of faithful and of hallucinated entities."""
    scenes = suite.split("test", config.test_scenes)
    label = detector.calibration.label
    languages = {}
    for lang, scores in _entity_scores(detector, suite, scenes, config.languages, progress, "detector AUROC").items():
        good, bad = scores.faithful_captions, scores.hallucinated_captions
        by_kind = {kind: auroc(good, [s for s, scene in zip(bad, scenes) if scene.change == kind])
                   for kind in sorted({s.change for s in scenes})}
        languages[lang] = {
            "auroc": auroc(good, bad), "entity_auroc": auroc(scores.faithful, scores.changed),
            "auroc_by_change": by_kind,
            "labels": {"faithful": _label_counts(map(label, scores.faithful)),
                       "hallucinated": _label_counts(map(label, scores.changed))},
        }
    examples = []
    for scene in scenes[: config.examples]:
        truth, caption = scene.captions[config.languages[0]]
        examples.append({"truth": truth, "caption": caption,
                         "entities": [{"text": d.entity.text, "score": round(d.score, 4), "label": d.label,
                                       "parts": {k: round(v, 4) for k, v in d.parts.items()}}
                                      for d in detector.detect(caption, scene.load_image(suite.root))]})
    first = languages[config.languages[0]]
    return {"auroc": first["auroc"], "entity_auroc": first["entity_auroc"],
            "calibration": to_dict(detector.calibration), "scenes": len(scenes), "languages": languages,
            "examples": examples}


def evaluate_pope(engine: Engine, suite: Suite, config: HallucinationConfig, out: Path | None, progress
                  ) -> dict[str, Any]:
    """POPE's three settings on test scenes with enough objects; the probe and answer files go to `out/pope`."""
    scenes, images = _pope_scenes(suite, config)
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
            write_jsonl(out / "pope" / f"synthetic_pope_{setting}.json", [p.to_json() for p in probes])
            write_jsonl(out / "pope" / f"synthetic_pope_{setting}_answers.json",
                         [{"question_id": p.question_id, "question": p.text, "answer": a}
                          for p, a in zip(probes, answers)])
    return results


def _pope_scenes(suite: Suite, config: HallucinationConfig) -> tuple[dict[str, list[str]], dict[str, Image.Image]]:
    """The first `pope_scenes` test scenes with `pope_sample_num` different objects: their objects ("red
    circle") and their images, by image name."""
    objects: dict[str, list[str]] = {}
    images: dict[str, Image.Image] = {}
    for scene in suite.split("test"):
        names = list(dict.fromkeys(o.name for o in scene.objects))
        if len(names) >= config.pope_sample_num:
            name = Path(scene.image).name
            objects[name], images[name] = names, scene.load_image(suite.root)
        if len(objects) == config.pope_scenes:
            return objects, images
    raise ConfigError(f"the suite {suite.root} has {len(objects)} test scenes with {config.pope_sample_num} different "
                      f"objects; pope_scenes asks for {config.pope_scenes}")


def evaluate_chair(engine: Engine, detector: HallucinationDetector, suite: Suite, config: HallucinationConfig,
                   progress) -> dict[str, Any]:
    """CHAIR of the model's captions of test scenes, with the detector's labels on their entities, beside
    CHAIR of the true captions and of captions with a swapped object (which check the metric itself)."""
    scenes = suite.split("test", config.chair_scenes)
    images = [s.load_image(suite.root) for s in scenes]
    truth = [{o.object for o in s.objects} for s in scenes]
    captions = _generate(engine, [(config.caption_prompt, image) for image in images], config.caption_max_new_tokens,
                         config.seed, progress, "CHAIR captions")
    model = chair(captions, truth, detector.lexicon)
    detections = detector.detect_batch(captions, images)
    model["detector_labels"] = _label_counts(d.label for row in detections for d in row)
    model["sentences"] = model["sentences"][: config.examples]
    references = {}
    english = [s.captions.get("en") or next(iter(s.captions.values())) for s in scenes]
    for name, which in (("true captions", 0), ("swapped captions", 1)):
        scored = chair([pair[which] for pair in english], truth, detector.lexicon)
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

