"""Turning images and texts into model-ready tensors.

Images are resized and normalised with the article's mean/std at load time (shards
keep the encoded images); texts are tokenised, right-padded, and checked against
the model's length limit so an over-long sample is reported, not silently cut.
`SampleCollator` does the same for whole `Sample`s: chat turns, `<image>`
expansion to the model's visual-token count, labels on the assistant's text, and
a length check after expansion that leaves a sample out with a logged reason
instead of failing (or, on many GPUs, hanging) the batch.
"""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from transformers import PreTrainedTokenizerBase

from vlstack.data.augment import AugmentConfig, WordGroups, augment_image, augment_text
from vlstack.data.negatives import swap_negative
from vlstack.data.schema import IMAGE_TOKEN, Sample
from vlstack.data.stream import Skip
from vlstack.errors import DataError
from vlstack.models.config import VisionConfig
from vlstack.models.tokenizer import IM_END, expand_image_placeholders

logger = logging.getLogger(__name__)
IGNORE_INDEX = -100
"""Label of a token the loss skips (prompt, padding, image slots)."""

RESAMPLE = {"bilinear": TF.InterpolationMode.BILINEAR, "bicubic": TF.InterpolationMode.BICUBIC}


def image_to_tensor(image: Image.Image, vision: VisionConfig) -> torch.Tensor:
    """PIL image -> float tensor [3, S, S] as the tower expects it (`VisionConfig` size, resize mode,
    mean/std): resized to the square, or for a CLIP tower its shorter side resized and centre-cropped.
    A pretrained tower's settings reproduce its `transformers` image processor."""
    size = vision.image_size
    tensor = TF.to_image(image.convert("RGB"))  # uint8 [3, H, W]
    interpolation = RESAMPLE[vision.resample]
    if vision.crop:
        tensor = TF.center_crop(TF.resize(tensor, size, interpolation=interpolation, antialias=True), [size, size])
    else:
        tensor = TF.resize(tensor, [size, size], interpolation=interpolation, antialias=True)
    tensor = TF.to_dtype(tensor, torch.float32, scale=True)
    return TF.normalize(tensor, list(vision.image_mean), list(vision.image_std))


@dataclass
class TextBatch:
    input_ids: torch.Tensor  # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T]


def tokenize_texts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, truncate: bool = False
) -> TextBatch:
    """Tokenise and right-pad `texts`, ending each with EOS; a text over `max_length` is a DataError,
    unless `truncate` (for scoring, where the first tokens are enough) cuts it to fit."""
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    keep = max_length - 1 if truncate else None
    ids = [seq[:keep] + [tokenizer.eos_token_id] for seq in ids]
    too_long = [i for i, seq in enumerate(ids) if len(seq) > max_length]
    if too_long:
        first = too_long[0]
        raise DataError(
            f"text {first} is {len(ids[first])} tokens, over the limit of {max_length} "
            f"({len(too_long)} text(s) too long): {texts[first][:60]!r}..."
        )
    width = max(len(seq) for seq in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        attention_mask[row, : len(seq)] = 1
    return TextBatch(input_ids, attention_mask)


# --- image-text pairs, one at a time (streaming) --------------------------------------------


@dataclass
class PairEncoder:
    """A sample -> one pretraining pair: its first image as pixels, its text as token ids ending in EOS.

    The `encode` of a `vlstack.data.stream.StreamingBatches` (it runs in the loader's workers): a sample
    without an image or a text, an undecodable image or a text over `max_text_tokens` raises `Skip`.
    With `augment`, the label-preserving augmentation of `vlstack.data.augment` runs first. With `contrasts`,
    the pair also carries its swap negative (`vlstack.data.negatives`): the text with one word swapped for a
    contradicting one (no ids when no word of it is in a group)."""

    tokenizer: PreTrainedTokenizerBase
    vision: VisionConfig
    max_text_tokens: int
    augment: AugmentConfig | None = None
    contrasts: WordGroups | None = None

    def __call__(self, sample: Sample, rng: random.Random) -> dict[str, Any]:
        if not sample.images or not sample.text.strip():
            raise Skip("not_a_pair", "a pretraining pair needs an image and a text")
        try:
            image = Image.open(io.BytesIO(sample.images[0].data))
            image.load()
        except Exception as error:  # decoders raise many types on bad bytes
            raise Skip("undecodable_image", f"{type(error).__name__}: {error}") from None
        text = sample.text
        if self.augment is not None:
            generator = torch.Generator().manual_seed(rng.getrandbits(62))
            image = augment_image(image, [text], generator, self.augment)
            text = augment_text(text, rng, self.augment)
        ids = self._ids(text)
        if len(ids) > self.max_text_tokens:
            raise Skip("too_long", f"{len(ids)} tokens, over data.max_text_tokens = {self.max_text_tokens}")
        pair = {"pixel_values": image_to_tensor(image, self.vision), "input_ids": ids}
        if self.contrasts is not None:
            negative = swap_negative(text, rng, self.contrasts)
            pair["negative_ids"] = self._ids(negative)[: self.max_text_tokens] if negative else []
        return pair

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]


@dataclass
class PairCollate:
    """Encoded pairs -> `pixel_values` [B, 3, S, S], `input_ids` / `attention_mask` [B, T] (right-padded); pairs
    with swap negatives also give `negative_ids` / `negative_attention_mask` [B, T'] and `has_negative` [B] (a
    pair without one gets a lone padding token, which the loss leaves out)."""

    pad_token_id: int

    def __call__(self, pairs: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {"pixel_values": torch.stack([p["pixel_values"] for p in pairs]),
                 **self._padded([p["input_ids"] for p in pairs], "input_ids", "attention_mask")}
        if "negative_ids" in pairs[0]:
            negatives = [p["negative_ids"] or [self.pad_token_id] for p in pairs]
            batch.update(self._padded(negatives, "negative_ids", "negative_attention_mask"))
            batch["has_negative"] = torch.tensor([bool(p["negative_ids"]) for p in pairs])
        return batch

    def _padded(self, rows: list[list[int]], ids_key: str, mask_key: str) -> dict[str, torch.Tensor]:
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)  # [B, T]
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, T]
        for number, row in enumerate(rows):
            ids[number, : len(row)] = torch.tensor(row)
            mask[number, : len(row)] = 1
        return {ids_key: ids, mask_key: mask}


# --- samples -> model batches ---------------------------------------------------------------


@dataclass
class CollateConfig:
    num_image_tokens: int
    """`<image>` slots per image in the LM input: `QwenImageModel.num_image_tokens()`."""
    max_length: int = 2048
    """Longest token sequence after `<image>` expansion; longer samples are left out of the batch."""
    vision: VisionConfig = field(default_factory=VisionConfig)
    """The tower's image size and preprocessing (`model.config.vision`)."""


def sample_messages(sample: Sample) -> list[dict[str, str]]:
    """The chat turns a sample trains: its conversations, or question -> first answer, or images -> text.

    Every image's `<image>` marker is in a user turn (in front, when the text names none), except in
    interleaved text, where the markers stay where the images sit. A conversation's `meta["system"]`
    (OpenAI-style data) becomes a leading system message.
    """
    if sample.conversations:
        roles = {"human": "user", "gpt": "assistant"}
        system = [{"role": "system", "content": sample.meta["system"]}] if sample.meta.get("system") else []
        return system + [{"role": roles[t["from"]], "content": t["value"]} for t in sample.conversations]
    markers = "".join(IMAGE_TOKEN for _ in sample.images)
    if sample.question:
        question = sample.question if IMAGE_TOKEN in sample.question else f"{markers}\n{sample.question}"
        return [{"role": "user", "content": question}, {"role": "assistant", "content": sample.answers[0]}]
    if IMAGE_TOKEN in sample.text:
        return [{"role": "assistant", "content": sample.text}]
    return [{"role": "user", "content": markers}, {"role": "assistant", "content": sample.text}]


class SampleCollator:
    """`Sample`s -> a padded batch; a sample that cannot train is left out with a logged reason.

    Returns `input_ids`, `attention_mask` and `labels` [B, T] (right-padded; labels are -100 except on
    assistant text and the `<|im_end|>` that closes it), `pixel_values` [N_images, 3, S, S] in sample
    order, `image_counts` [B], `ids`, and `rejected`: `{"id", "reason", "detail"}` for each sample
    left out: `too_long` (over `max_length` after `<image>` expansion), `image_count` (markers and
    images disagree), `no_supervised_tokens` or `undecodable_image`. A batch whose samples are all
    left out has B = 0; skip it on every rank alike.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, cfg: CollateConfig):
        self.tokenizer, self.cfg = tokenizer, cfg
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.im_end_id = tokenizer.convert_tokens_to_ids(IM_END)

    def image_tensors(self, sample: Sample, augment: AugmentConfig | None = None, rng: random.Random | None = None
                      ) -> torch.Tensor:
        """The sample's images, resized and normalised: [n, 3, S, S]; raises `SampleRejected` on bad bytes. With
        `augment`, each image first gets the label-preserving augmentation (`vlstack.data.augment`, guarded by
        every text of the sample), drawn from `rng`."""
        size = self.cfg.vision.image_size
        images = [_open_image(ref.data) for ref in sample.images]
        if augment is not None:
            texts = [message["content"] for message in sample_messages(sample)]
            rng = rng or random.Random(sample.id)
            images = [augment_image(image, texts, torch.Generator().manual_seed(rng.getrandbits(62)), augment,
                                    has_boxes=bool(sample.regions)) for image in images]
        tensors = [image_to_tensor(image, self.cfg.vision) for image in images]
        return torch.stack(tensors) if tensors else torch.zeros((0, 3, size, size))

    def __call__(self, samples: Sequence[Sample]) -> dict[str, Any]:
        rows, pixels, counts, ids, rejected = [], [], [], [], []
        for sample in samples:
            try:
                input_ids, labels = self.encode(sample)
                images = list(self.image_tensors(sample))  # [3, S, S] each
            except SampleRejected as error:
                rejected.append({"id": sample.id, "reason": error.reason, "detail": str(error)})
                logger.warning("left out of the batch: sample %r (%s): %s", sample.id, error.reason, error)
                continue
            rows.append((input_ids, labels))
            pixels.extend(images)
            counts.append(len(images))
            ids.append(sample.id)
        width = max((len(r[0]) for r in rows), default=0)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)  # [B, T]
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # [B, T]
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, T]
        for row, (seq, target) in enumerate(rows):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, : len(seq)] = torch.tensor(target)
            attention_mask[row, : len(seq)] = 1
        size = self.cfg.vision.image_size
        return {
            "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "pixel_values": torch.stack(pixels) if pixels else torch.zeros((0, 3, size, size)),  # [N, 3, S, S]
            "image_counts": torch.tensor(counts, dtype=torch.long), "ids": ids, "rejected": rejected,
        }

    def encode(self, sample: Sample) -> tuple[list[int], list[int]]:
        """Token ids with each `<image>` expanded, and labels; raises `SampleRejected`."""
        messages = sample_messages(sample)
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        spans, cursor = [], 0
        for message in messages:  # character spans of the assistant turns' text in the rendered chat
            start = text.find(message["content"], cursor)
            if start < 0:  # a chat template that drops or rewrites a turn: never a silent zero loss
                if message["role"] == "assistant":
                    raise SampleRejected("no_supervised_tokens", "the chat template does not render an assistant "
                                                                 "turn's text; check tokenizer.chat_template")
                continue
            cursor = start + len(message["content"])
            if message["role"] == "assistant":
                spans.append((start, cursor))
        ids, labels, previous_supervised = encoded["input_ids"], [], False
        for token, (begin, end) in zip(ids, encoded["offset_mapping"]):
            supervised = token != self.image_id and any(a <= begin and end <= b for a, b in spans)
            closes = token == self.im_end_id and previous_supervised
            labels.append(token if supervised or closes else IGNORE_INDEX)
            previous_supervised = supervised
        markers = ids.count(self.image_id)
        if markers != len(sample.images):
            raise SampleRejected("image_count", f"{markers} {IMAGE_TOKEN} marker(s) for {len(sample.images)} image(s)")
        if all(label == IGNORE_INDEX for label in labels):
            raise SampleRejected("no_supervised_tokens", "no assistant text to learn from")
        per_image = self.cfg.num_image_tokens
        expanded = expand_image_placeholders(ids, self.image_id, per_image)
        if len(expanded) > self.cfg.max_length:
            raise SampleRejected("too_long", f"{len(expanded)} tokens with {markers} x {per_image} image slots, "
                                             f"over max_length {self.cfg.max_length}")
        expanded_labels: list[int] = []
        for token, label in zip(ids, labels):
            expanded_labels.extend([IGNORE_INDEX] * per_image if token == self.image_id else [label])
        return expanded, expanded_labels


class SampleRejected(DataError):
    """A sample that cannot go into a batch; `reason` is a short code for counting."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _open_image(data: bytes | None) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:  # decoders raise many types on bad bytes
        raise SampleRejected("undecodable_image", f"{type(exc).__name__}: {exc}") from exc
    return image
