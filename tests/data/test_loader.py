"""The sample collator: chat turns, `<image>` expansion, labels, and the samples it leaves out."""

from __future__ import annotations

import logging

import pytest

from vlstack.data.collate import IGNORE_INDEX, CollateConfig, SampleCollator, sample_messages
from vlstack.data.schema import ImageRef, Sample
from vlstack.models.config import VisionConfig
from vlstack.models.tokenizer import special_token_ids
from vlstack.synthetic.corpus import make_sample

KINDS = ("caption", "vqa", "interleaved", "grounding")


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return [make_sample(KINDS[i % 4], 5, i) for i in range(22)]


@pytest.fixture
def collator(tokenizer) -> SampleCollator:
    return SampleCollator(tokenizer, CollateConfig(num_image_tokens=4, max_length=128, vision=VisionConfig(image_size=16)))


def test_collate_expands_images_and_supervises_only_the_answer(collator, tokenizer, samples):
    batch = collator(samples[:4])
    image_id = special_token_ids(tokenizer).image
    n_images = sum(len(s.images) for s in samples[:4])
    assert batch["pixel_values"].shape == (n_images, 3, 16, 16)
    assert batch["image_counts"].tolist() == [len(s.images) for s in samples[:4]]
    assert ((batch["input_ids"] == image_id).sum(1) == batch["image_counts"] * 4).all()
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["labels"][batch["input_ids"] == image_id] == IGNORE_INDEX).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    vqa_row = batch["ids"].index(samples[1].id)
    supervised = batch["labels"][vqa_row][batch["labels"][vqa_row] != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == samples[1].answers[0] + "<|im_end|>"


def test_collate_leaves_out_what_cannot_train_and_says_why(collator, samples, caplog):
    long = make_sample("caption", 5, 0)
    long.text = "a red circle " * 40
    broken = Sample("broken", "caption", [ImageRef("png", b"not an image")], text="a red circle")
    with caplog.at_level(logging.WARNING):
        batch = collator([long, samples[0], broken])
    assert batch["ids"] == [samples[0].id] and batch["input_ids"].shape[0] == 1
    assert [(r["id"], r["reason"]) for r in batch["rejected"]] == [(long.id, "too_long"), ("broken", "undecodable_image")]
    assert "too_long" in caplog.text and "over max_length 128" in caplog.text
    empty = collator([long])
    assert empty["input_ids"].shape == (0, 0) and empty["pixel_values"].shape == (0, 3, 16, 16)


def test_messages_per_kind(samples):
    assert [m["role"] for m in sample_messages(samples[0])] == ["user", "assistant"]  # caption
    assert sample_messages(samples[1])[0]["content"].startswith("<image>\n")  # vqa question
    assert sample_messages(samples[2]) == [{"role": "assistant", "content": samples[2].text}]  # interleaved
