"""The cleaning pipeline's configuration and per-sample stages.

Per sample, in order: decode/validate (every image) → blur → perplexity →
relevance (only with a scorer) → privacy (text PII, faces, metadata; images
re-encoded as 8-bit RGB without metadata) → dedup. The per-sample stages run in
`Stages`, a picklable callable over a batch, so the local and the Ray executor
run the very same code; dedup needs the samples one at a time in input order,
so it runs in the single ordered pass of `vlstack.data.clean.run.clean`, and
the kept ids never depend on the executor or the number of workers.

Accounting: every input item becomes one `Outcome`, kept (written to the output
shards, its `meta["clean"]` holding each stage's score and what was redacted)
or rejected (a line of `rejected.jsonl` with its reason codes and details).
Unreadable or truncated shards are items too: the shard reader reports each
lost id, so nothing disappears without a line.

With `evaluate_all` (the default) every stage judges every sample it can (a
blurry sample still gets its perplexity, relevance and PII findings), so a
rejection lists all its reasons and the histograms show every score; turn it
off to skip later stages once a sample is dropped (cheaper with a large
relevance model).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vlstack.checkpoint import load_checkpoint_tokenizer, load_model
from vlstack.data.clean.dedup import DedupConfig, Fingerprint, fingerprint
from vlstack.data.clean.perplexity import (
    PerplexityConfig,
    PerplexityModel,
    build_perplexity_model,
    check_perplexity,
    perplexity_limit,
)
from vlstack.data.clean.privacy import FaceConfig, blur_faces, encode_without_metadata, metadata_found, redact_text
from vlstack.data.clean.quality import BlurConfig, DecodeConfig, check_blur, decode_image
from vlstack.data.clean.relevance import (
    ITCScorer,
    RelevanceConfig,
    RelevanceScorer,
    check_relevance,
    load_clip_scorer,
)
from vlstack.data.schema import IMAGE_TOKEN, KINDS, ImageRef, Rejected, Sample, image_name
from vlstack.data.shards import MANIFEST, read_manifest, read_shard, read_shards
from vlstack.devices import resolve_device
from vlstack.errors import ConfigError, DataError

_JPEG_SOURCES = ("jpg", "jpeg", "webp")
"""Lossy sources are re-encoded as JPEG; everything else as PNG (lossless stays lossless)."""


# --- configuration ---------------------------------------------------------------------------


@dataclass
class BlurStage(BlurConfig):
    enabled: bool = True
    """Drop blurry images (see `vlstack.data.clean.quality`)."""


@dataclass
class PerplexityStage(PerplexityConfig):
    enabled: bool = True
    """Drop texts whose perplexity under the reference model is over `max_perplexity`."""
    reference: str | None = None
    """Reference corpus of the n-gram model: a text file (one text per line) or a shard directory of
    trusted samples. None (and no `model_path`): the word-frequency model, which needs none."""
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    """Sample kinds whose text is judged."""


@dataclass
class RelevanceStage(RelevanceConfig):
    model: str | None = None
    """A CLIP (transformers or open_clip) or vlstack checkpoint directory. None skips the stage,
    unless `clean()` is handed a scorer object."""
    kinds: list[str] = field(default_factory=lambda: ["caption", "grounding"])
    """Sample kinds judged: those whose text describes the (single) image. A question, a page
    transcription or a data table is not a caption, and CLIP thresholds do not apply to it."""
    batch_size: int = 32
    """Pairs per scorer call."""
    device: str = "auto"
    """Where the scorer runs: auto (CUDA when a GPU is present, else cpu), cpu, cuda or cuda:N."""
    max_text_tokens: int = 64
    """Tokens of text a vlstack checkpoint scores (longer texts are scored on their start)."""


@dataclass
class FaceStage(FaceConfig):
    enabled: bool = True
    """Blur detected faces."""


@dataclass
class PrivacyStage:
    enabled: bool = True
    """De-identify kept samples and re-encode their images as 8-bit RGB without metadata (EXIF, GPS,
    ICC, text chunks). Off: samples are written as they came, odd modes and metadata included."""
    text: bool = True
    """Replace PII in every text field (text, question, answers, turns, region phrases) by [TYPE]."""
    faces: FaceStage = field(default_factory=FaceStage)
    jpeg_quality: int = 95
    """Quality of re-encoded JPEG sources (PNG and other lossless sources are written as PNG)."""


@dataclass
class DedupStage(DedupConfig):
    max_hamming: int = 12
    """Largest pHash Hamming distance for near-duplicate images. 12, not the filter's 10: of 600 near
    copies of 64 px shape scenes (1-2 px crop, brightness +-5-8%, JPEG 90) 92% measure <= 10 and 98%
    <= 12, while unrelated photographs measure >= 23, and with `match: pair` the texts must match too."""
    min_jaccard: float = 0.9
    """Smallest estimated Jaccard of character 5-grams for near-duplicate texts. 0.9, not the filter's 0.8:
    in a short caption one changed word ("a blue circle" / "a blue square") already costs ~20% of the
    shingles, and such pairs are different samples; 0.9 still matches case, punctuation and typo edits."""
    enabled: bool = True
    """Drop exact and near duplicates of an earlier kept sample (see `vlstack.data.clean.dedup`)."""


@dataclass
class CleanConfig:
    """A cleaning run: one section per stage (each can be switched off, except decoding) and how to run."""

    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """Always on: the other stages need pixels, and a broken image is never written."""
    blur: BlurStage = field(default_factory=BlurStage)
    perplexity: PerplexityStage = field(default_factory=PerplexityStage)
    relevance: RelevanceStage = field(default_factory=RelevanceStage)
    privacy: PrivacyStage = field(default_factory=PrivacyStage)
    dedup: DedupStage = field(default_factory=DedupStage)
    evaluate_all: bool = True
    """Judge every sample with every stage (all reasons, full histograms); false skips the later
    stages of a dropped sample."""
    workers: int = 1
    """Processes (local) or actors (Ray) running the per-sample stages."""
    batch_size: int = 32
    """Samples per batch handed to a worker."""
    samples_per_shard: int = 1000
    """Samples per output shard."""
    examples: int = 3
    """Examples per reason in report.md."""

    def __post_init__(self) -> None:
        for name, kinds in (("perplexity", self.perplexity.kinds), ("relevance", self.relevance.kinds)):
            unknown = sorted(set(kinds) - set(KINDS))
            if unknown:
                raise ConfigError(f"'{name}.kinds' has unknown kind(s) {unknown}; valid kinds: {', '.join(KINDS)}")
        for name in ("workers", "batch_size", "samples_per_shard"):
            if getattr(self, name) < 1:
                raise ConfigError(f"'{name}' must be at least 1, got {getattr(self, name)}")


# --- inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardUnit:
    """One input shard and the ids its manifest lists (None without a manifest)."""

    path: str
    ids: tuple[str, ...] | None = None


@dataclass
class SourcedItem:
    item: Sample | Rejected
    source: str


def input_units(input_dir: str | Path) -> tuple[list[ShardUnit], list[Rejected]]:
    """The shards to read, in manifest order (sorted `*.tar` without one), and problems with the manifest."""
    directory = Path(input_dir)
    if not directory.is_dir():
        raise DataError(f"input directory {directory} does not exist; point `clean` at a shard directory")
    if (directory / MANIFEST).exists():
        try:
            return [ShardUnit(str(directory / info.shard), tuple(info.ids)) for info in read_manifest(directory)], []
        except DataError as error:
            problem = Rejected(None, "unreadable_manifest", f"{error}; read every *.tar instead", str(directory))
            return [ShardUnit(str(p)) for p in sorted(directory.glob("*.tar"))], [problem]
    units = [ShardUnit(str(p)) for p in sorted(directory.glob("*.tar"))]
    if not units:
        raise DataError(f"{directory} holds no {MANIFEST} and no *.tar shards")
    return units, []


def read_unit(unit: ShardUnit) -> Iterator[SourcedItem]:
    """Every sample of a shard, and every lost or unreadable one as a `Rejected`."""
    for item in read_shard(unit.path, None if unit.ids is None else list(unit.ids)):
        yield SourcedItem(item, unit.path)


def judged_text(sample: Sample) -> str:
    """The natural-language text of a sample that text filters judge: text, question and turns,
    without `<image>` markers (answers are labels, not prose)."""
    parts = [sample.text, sample.question, *(turn["value"] for turn in sample.conversations)]
    return " ".join(" ".join(part.replace(IMAGE_TOKEN, " ").split()) for part in parts if part.strip()).strip()


def reference_texts(path: str | Path) -> list[str]:
    """The perplexity reference corpus: lines of a text file, or the judged texts of a shard directory."""
    path = Path(path)
    if path.is_dir():
        return [judged_text(s) for s in read_shards(path) if isinstance(s, Sample)]
    if path.is_file():
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    raise ConfigError(f"'perplexity.reference' {str(path)!r} does not exist; give a text file (one text per "
                      "line) or a shard directory of trusted samples")


# --- per-sample stages -----------------------------------------------------------------------


@dataclass
class Outcome:
    """What became of one input item: kept (`sample` is the cleaned sample) or rejected (`reasons`)."""

    id: str | None
    source: str
    sample: Sample | None = None
    reasons: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    steps: dict[str, Any] = field(default_factory=dict)
    """Provenance: each stage's measurements and findings (what `meta["clean"]` of a kept sample holds)."""
    fingerprint: Fingerprint | None = None

    @property
    def kept(self) -> bool:
        return not self.reasons

    def drop(self, reason: str, detail: str = "") -> None:
        self.reasons.append(reason)
        self.details.append(f"{reason}: {detail}" if detail else reason)

    def rejected_record(self) -> dict[str, Any]:
        """The `rejected.jsonl` line: first reason for counting, all reasons, details and provenance."""
        return {"id": self.id, "reason": self.reasons[0], "reasons": self.reasons, "detail": "; ".join(self.details),
                "source": self.source, "steps": self.steps}


@dataclass
class _Work:
    """A sample in flight through the stages."""

    outcome: Outcome
    sample: Sample
    images: list[Image.Image] = field(default_factory=list)
    """Decoded RGB images; empty when any image failed to decode."""
    exifs: list[Image.Exif | None] = field(default_factory=list)
    cleaned: Sample | None = None


class Stages:
    """The per-sample stages as one picklable callable: a batch of `SourcedItem`s -> one `Outcome` each.

    Models are built once, in `build`, and travel with the object to every worker.
    """

    def __init__(self, cfg: CleanConfig, perplexity_model: PerplexityModel | None = None,
                 scorer: RelevanceScorer | None = None):
        self.cfg = cfg
        self.perplexity_model = perplexity_model
        self.scorer = scorer
        self._chain = [self._decode]
        self._chain += [self._blur] if cfg.blur.enabled else []
        self._chain += [self._perplexity] if perplexity_model is not None else []
        self._chain += [self._relevance] if scorer is not None else []
        self._chain += [self._privacy] if cfg.privacy.enabled else []
        self._chain += [self._fingerprint] if cfg.dedup.enabled else []

    @classmethod
    def build(cls, cfg: CleanConfig, scorer: RelevanceScorer | None = None) -> Stages:
        """Load the models the config names: the perplexity model (trained on the reference corpus for
        the built-in n-gram) and the relevance scorer, unless one is given."""
        model = None
        if cfg.perplexity.enabled:
            reference = cfg.perplexity.reference
            texts = reference_texts(reference) if reference is not None and cfg.perplexity.model_path is None else None
            model = build_perplexity_model(cfg.perplexity, texts)
            cfg.perplexity.max_perplexity = perplexity_limit(model, cfg.perplexity)  # clean_config.yaml shows it
        if scorer is None and cfg.relevance.model is not None:
            scorer = load_scorer(cfg.relevance)
        return cls(cfg, model, scorer)

    def __call__(self, items: list[SourcedItem]) -> list[Outcome]:
        outcomes, works = [], []
        for entry in items:
            item = entry.item
            if isinstance(item, Rejected):
                outcome = Outcome(item.id, item.source)
                outcome.drop(item.reason, item.detail)
            else:
                outcome = Outcome(item.id, entry.source)
                works.append(_Work(outcome, item))
            outcomes.append(outcome)
        for stage in self._chain:
            stage([w for w in works if self.cfg.evaluate_all or w.outcome.kept])
        for work in works:
            if work.outcome.kept:
                cleaned = work.cleaned or work.sample
                cleaned.meta = {**cleaned.meta, "clean": work.outcome.steps}
                work.outcome.sample = cleaned
        return outcomes

    # each stage takes the samples it may judge and records into their outcomes

    def _decode(self, works: list[_Work]) -> None:
        for work in works:
            infos, images, exifs = [], [], []
            for ref in work.sample.images:
                decoded = decode_image(ref.data, self.cfg.decode)
                info: dict[str, Any] = {"name": ref.name, "mode": decoded.source_mode}
                if decoded.image is None:
                    work.outcome.drop(decoded.verdict.reason, f"image {ref.name}: {decoded.verdict.detail}")
                else:
                    info["size"] = list(decoded.image.size)
                    images.append(decoded.image)
                    exifs.append(decoded.exif)
                infos.append(info)
            work.outcome.steps["decode"] = {"images": infos}
            if len(images) == len(work.sample.images):
                work.images, work.exifs = images, exifs

    def _blur(self, works: list[_Work]) -> None:
        for work in (w for w in works if w.images):
            verdicts = [check_blur(image, self.cfg.blur) for image in work.images]
            worst = max(verdicts, key=lambda v: v.score)
            work.outcome.steps["blur"] = {"score": round(worst.score, 4)}
            if not worst.keep:
                work.outcome.drop(worst.reason, f"score {worst.score:.3f} > {self.cfg.blur.max_score}")

    def _perplexity(self, works: list[_Work]) -> None:
        judged = [w for w in works if w.sample.kind in self.cfg.perplexity.kinds]
        verdicts = check_perplexity([judged_text(w.sample) for w in judged], self.perplexity_model,
                                    self.cfg.perplexity)
        for work, verdict in zip(judged, verdicts):
            finite = verdict.score < float("inf")
            work.outcome.steps["perplexity"] = {"score": round(verdict.score, 2) if finite else None}
            if not verdict.keep:
                shown = f"{verdict.score:.1f}" if finite else "inf (no text)"
                work.outcome.drop(verdict.reason, f"{shown} > {self.cfg.perplexity.max_perplexity}")

    def _relevance(self, works: list[_Work]) -> None:
        judged = [w for w in works if w.images and len(w.images) == 1 and w.sample.kind in self.cfg.relevance.kinds]
        if not judged:
            return
        verdicts = check_relevance([w.images[0] for w in judged], [judged_text(w.sample) for w in judged],
                                   self.scorer, self.cfg.relevance)
        for work, verdict in zip(judged, verdicts):
            work.outcome.steps["relevance"] = {"score": round(verdict.score, 4)}
            if not verdict.keep:
                work.outcome.drop(verdict.reason, f"{verdict.score:.3f} < {self.cfg.relevance.min_score}")

    def _privacy(self, works: list[_Work]) -> None:
        """Findings for every judged sample; the cleaned copy (redacted, re-encoded) only for kept ones."""
        privacy = self.cfg.privacy
        for work in works:
            sample, step = work.sample, {}
            if privacy.text:
                sample, found = _redact_sample(sample)
                if found:
                    step["text"] = dict(sorted(found.items()))
            refs, image_findings = [], []
            for position, (image, exif) in enumerate(zip(work.images, work.exifs)):
                found = metadata_found(exif)
                if privacy.faces.enabled:
                    image, faces = blur_faces(image, privacy.faces)
                    found.update(faces)
                image_findings.append(dict(sorted(found.items())))
                if work.outcome.kept:
                    refs.append(_reencode(image, sample.images[position].name, position, len(work.images),
                                          privacy.jpeg_quality))
            if any(image_findings):
                step["images"] = image_findings
            work.outcome.steps["privacy"] = step
            if work.outcome.kept:
                work.cleaned = _replace(sample, images=refs)

    def _fingerprint(self, works: list[_Work]) -> None:
        for work in (w for w in works if w.outcome.kept):
            work.outcome.fingerprint = fingerprint(
                judged_text(work.cleaned or work.sample), work.images, [ref.data for ref in work.sample.images],
                self.cfg.dedup,
            )


def load_scorer(cfg: RelevanceStage) -> RelevanceScorer:
    """The scorer of `cfg.model`: a vlstack checkpoint (its ITC heads) or a CLIP checkpoint directory."""
    path, device = Path(cfg.model), resolve_device(cfg.device)
    if (path / "config.yaml").is_file():
        model = load_model(path).to(device)
        return ITCScorer(model, load_checkpoint_tokenizer(path), cfg.max_text_tokens, cfg.batch_size, device)
    return load_clip_scorer(path, cfg.batch_size, device)


def _redact_sample(sample: Sample) -> tuple[Sample, Counter[str]]:
    """A copy with PII replaced in every text field, and the count per PII type."""
    found: Counter[str] = Counter()

    def redact(text: str) -> str:
        text, hits = redact_text(text)
        found.update(hits)
        return text

    cleaned = _replace(
        sample,
        text=redact(sample.text),
        question=redact(sample.question),
        answers=[redact(a) for a in sample.answers],
        conversations=[{"from": t["from"], "value": redact(t["value"])} for t in sample.conversations],
        regions=[[*r[:4], redact(r[4])] for r in sample.regions],
    )
    return cleaned, found


def _replace(sample: Sample, **changes: Any) -> Sample:
    fields = {**sample.__dict__, "meta": dict(sample.meta), **changes}
    return Sample(**fields)


def _reencode(image: Image.Image, name: str, position: int, count: int, quality: int) -> ImageRef:
    extension = name.rpartition(".")[2].lower()
    if extension in _JPEG_SOURCES:
        return ImageRef(image_name(position, count, "jpg"), encode_without_metadata(image, "JPEG", quality))
    return ImageRef(image_name(position, count, "png"), encode_without_metadata(image, "PNG"))
