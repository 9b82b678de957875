"""`Sample`: the one record type for all six data kinds, and `Rejected`, the record of a dropped one.

A sample's images are `ImageRef`s: a name plus the encoded bytes (JPEG, PNG, ...),
never decoded pixels. The name is the file's suffix inside a WebDataset shard —
`jpg` or `png` for a sample with one image (the `{key}.jpg` convention), `0.jpg`,
`1.png`, ... when there are several — so a shard member is always `{key}.{name}`
and the JSON names the files that belong to it. Decoding is left to the stages that
need pixels, so a reader or writer never pays for it and a corrupt file survives to
be rejected with a reason. `to_dict` writes only the names; the bytes travel as
shard members.

Regions are `[x0, y0, x1, y1, phrase]` in pixels of the first image.

Every sample has an image, except a text-only conversation: instruction sets such as
LLaVA-665K mix in text-only chats, which keep the LM's language skills while it learns to see.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from vlstack.errors import DataError

Kind = Literal["caption", "interleaved", "vqa", "document", "chart", "grounding"]
KINDS: tuple[str, ...] = get_args(Kind)
IMAGE_TOKEN = "<image>"
"""Where an image sits in interleaved text and in conversation turns (the LLaVA placeholder)."""
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
ROLES = ("human", "gpt")
_NAME = re.compile(rf"^(\d+\.)?({'|'.join(IMAGE_EXTENSIONS)})$")


@dataclass
class ImageRef:
    name: str
    """Suffix of the shard member holding the image: `jpg`, `png`, `1.jpg`, ..."""
    data: bytes | None = field(default=None, repr=False)
    """The encoded file; None until a reader loads it."""


def image_name(position: int, count: int, extension: str) -> str:
    """Shard suffix of image `position` of `count`: plain `jpg` for a single image, `0.jpg`, `1.jpg` for several."""
    extension = extension.lower().lstrip(".")
    return extension if count == 1 else f"{position}.{extension}"


@dataclass
class Sample:
    id: str
    kind: str
    images: list[ImageRef] = field(default_factory=list)
    text: str = ""
    """Caption (caption, grounding), text with `<image>` placeholders (interleaved),
    transcription (document), underlying data table (chart)."""
    question: str = ""
    answers: list[str] = field(default_factory=list)
    """Accepted answers to `question`; for a caption sample, all reference captions."""
    regions: list[list] = field(default_factory=list)
    """Grounded phrases: `[x0, y0, x1, y1, phrase]` in pixels of the first image."""
    conversations: list[dict[str, str]] = field(default_factory=list)
    """LLaVA turns: `{"from": "human" | "gpt", "value": ...}`, `<image>` marking each image."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Source, license, injected defects, provenance of each cleaning step; JSON-able."""

    def validate(self) -> Sample:
        """Raise a DataError naming the first bad field; returns self so calls chain."""
        _check_common(self)
        _KIND_CHECKS[self.kind](self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; images become their names and empty optional fields are left out."""
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "images": [ref.name for ref in self.images]}
        for name in ("text", "question", "answers", "regions", "conversations", "meta"):
            value = getattr(self, name)
            if value:
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], image_data: dict[str, bytes] | None = None) -> Sample:
        """Inverse of `to_dict`; `image_data` maps image names to bytes. Unknown keys are a DataError."""
        if not isinstance(data, dict):
            raise DataError(f"a sample must be a JSON object, got {type(data).__name__}")
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise DataError(f"sample {data.get('id')!r}: unknown field(s) {unknown}; valid fields: {sorted(valid)}")
        for required in ("id", "kind"):
            if required not in data:
                raise DataError(f"sample {data.get('id')!r}: field '{required}' is missing")
        names = data.get("images", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"sample {data['id']!r}: field 'images' must be a list of names, got {names!r}")
        image_data = image_data or {}
        images = [ImageRef(name, image_data.get(name)) for name in names]
        return cls(**{**data, "images": images}).validate()


@dataclass(frozen=True)
class Rejected:
    """An input that did not become a sample: its id (when known), a reason code, and where it came from."""

    id: str | None
    reason: str
    """Short code for counting. Readers use: `bad_json`, `bad_record`, `bad_header`, `invalid_sample`,
    `missing_image`, `unsupported_image`, `no_caption`, `no_answers`, `unknown_image`,
    `download_failed`, `no_image_column`, `unreadable_parquet`; shards add `unreadable_shard`,
    `missing_shard`, `lost_in_shard`, `missing_json`."""
    detail: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "reason": self.reason, "detail": self.detail, "source": self.source}


def _fail(sample: Sample, name: str, problem: str) -> None:
    raise DataError(f"sample {sample.id!r} ({sample.kind}): field '{name}' {problem}")


def _check_common(s: Sample) -> None:
    if not isinstance(s.id, str) or not s.id:
        raise DataError(f"sample {s.id!r}: field 'id' must be a non-empty string")
    if s.kind not in KINDS:
        _fail(s, "kind", f"is {s.kind!r}; valid kinds: {', '.join(KINDS)}")
    if not isinstance(s.images, list):
        _fail(s, "images", "must be a list of images")
    if not s.images and not s.conversations:
        _fail(s, "images", "must list at least one image (only a conversation may be text-only)")
    for i, ref in enumerate(s.images):
        if not isinstance(ref, ImageRef) or not _NAME.match(ref.name):
            _fail(s, f"images[{i}]", f"is {getattr(ref, 'name', ref)!r}; expected a name like 'jpg', 'png' or '1.jpg'")
        if ref.data is not None and not isinstance(ref.data, bytes):
            _fail(s, f"images[{i}]", "data must be bytes (the encoded file)")
    if len({ref.name for ref in s.images}) != len(s.images):
        _fail(s, "images", "has repeated names")
    for name in ("text", "question"):
        if not isinstance(getattr(s, name), str):
            _fail(s, name, "must be a string")
    if not isinstance(s.answers, list) or not all(isinstance(a, str) and a.strip() for a in s.answers):
        _fail(s, "answers", "must be a list of non-empty strings")
    if s.question and not s.answers:
        _fail(s, "answers", "is empty but 'question' is set; every question needs at least one answer")
    _check_conversations(s)
    _check_regions(s)
    if not isinstance(s.meta, dict):
        _fail(s, "meta", "must be a dict")
    try:
        json.dumps(s.meta)
    except (TypeError, ValueError) as error:
        _fail(s, "meta", f"is not JSON-able: {error}")


def _check_conversations(s: Sample) -> None:
    if not isinstance(s.conversations, list):
        _fail(s, "conversations", "must be a list of turns")
    for i, turn in enumerate(s.conversations):
        if not isinstance(turn, dict) or set(turn) != {"from", "value"}:
            _fail(s, f"conversations[{i}]", "must be {'from': ..., 'value': ...}")
        if turn["from"] not in ROLES or not isinstance(turn["value"], str):
            _fail(s, f"conversations[{i}]", f"needs 'from' in {ROLES} and a string 'value'")
    if s.conversations:
        if not any(turn["from"] == "gpt" for turn in s.conversations):
            _fail(s, "conversations", "has no 'gpt' turn, so nothing would be supervised")
        placeholders = sum(turn["value"].count(IMAGE_TOKEN) for turn in s.conversations)
        if placeholders != len(s.images):
            _fail(s, "conversations", f"has {placeholders} {IMAGE_TOKEN} placeholder(s) for {len(s.images)} image(s)")


def _check_regions(s: Sample) -> None:
    if not isinstance(s.regions, list):
        _fail(s, "regions", "must be a list of [x0, y0, x1, y1, phrase]")
    if s.regions and not s.images:
        _fail(s, "regions", "needs an image to locate its boxes in")
    for i, region in enumerate(s.regions):
        ok = (
            isinstance(region, (list, tuple))
            and len(region) == 5
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in region[:4])
            and isinstance(region[4], str)
            and region[4].strip()
        )
        if not ok:
            _fail(s, f"regions[{i}]", f"is {region!r}; expected [x0, y0, x1, y1, phrase]")
        x0, y0, x1, y1 = region[:4]
        if not (0 <= x0 < x1 and 0 <= y0 < y1):
            _fail(s, f"regions[{i}]", f"box {region[:4]} needs 0 <= x0 < x1 and 0 <= y0 < y1")


def _needs_text(s: Sample) -> None:
    if not s.text.strip():
        _fail(s, "text", "is empty")


def _check_interleaved(s: Sample) -> None:
    _needs_text(s)
    if s.text.count(IMAGE_TOKEN) != len(s.images):
        _fail(s, "text", f"has {s.text.count(IMAGE_TOKEN)} {IMAGE_TOKEN} placeholder(s) for {len(s.images)} image(s)")


def _check_vqa(s: Sample) -> None:
    if not (s.question.strip() or s.conversations):
        _fail(s, "question", "is empty (a vqa sample needs a question with answers, or conversations)")


def _check_page(s: Sample) -> None:
    """Documents and charts teach either reading (text) or answering (question + answers)."""
    if not (s.text.strip() or s.question.strip() or s.conversations):
        _fail(s, "text", "is empty and there is no question or conversation")


def _check_grounding(s: Sample) -> None:
    if not s.regions:
        _fail(s, "regions", "is empty; a grounding sample needs at least one [x0, y0, x1, y1, phrase]")


_KIND_CHECKS = {
    "caption": _needs_text,
    "interleaved": _check_interleaved,
    "vqa": _check_vqa,
    "document": _check_page,
    "chart": _check_page,
    "grounding": _check_grounding,
}
