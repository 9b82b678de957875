"""Loading cleaned shards: map-style and resumable streaming datasets, and the sample collator."""

from __future__ import annotations

import logging

import pytest

from vlstack.data.collate import IGNORE_INDEX, CollateConfig, SampleCollator, sample_messages
from vlstack.data.loader import ShardDataset, ShardStream
from vlstack.data.schema import ImageRef, Sample
from vlstack.data.shards import write_shards
from vlstack.errors import DataError
from vlstack.models.tokenizer import special_token_ids
from vlstack.synthetic.corpus import make_sample

KINDS = ("caption", "vqa", "interleaved", "grounding")


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return [make_sample(KINDS[i % 4], 5, i) for i in range(22)]


@pytest.fixture(scope="module")
def shards(samples, tmp_path_factory):
    path = tmp_path_factory.mktemp("shards")
    write_shards(samples, path, samples_per_shard=5)
    return path


def test_map_style_reads_any_index(shards, samples):
    dataset = ShardDataset(shards)
    assert len(dataset) == len(samples)
    assert [dataset[i] for i in (21, 0, 7)] == [samples[21], samples[0], samples[7]]


def test_map_style_skips_an_unreadable_shard(shards, samples, tmp_path, caplog):
    write_shards(samples, tmp_path, samples_per_shard=5)
    (tmp_path / "shard-00001.tar").write_bytes(b"not a tar at all" * 64)
    with caplog.at_level(logging.WARNING):
        dataset = ShardDataset(tmp_path)
    assert [dataset[i].id for i in range(len(dataset))] == [s.id for s in samples[:5] + samples[10:]]
    assert "shard-00001.tar" in caplog.text


def test_stream_resumes_exactly_where_it_stopped(shards, samples):
    stream = ShardStream(shards, seed=3, epochs=2)
    full = [s.id for s in stream]
    assert sorted(full[:22]) == sorted(s.id for s in samples) and full[:22] != full[22:]  # reshuffled per epoch
    first = ShardStream(shards, seed=3, epochs=2)
    iterator = iter(first)
    head = [next(iterator).id for _ in range(13)]
    resumed = ShardStream(shards, seed=3, epochs=2)
    resumed.load_state_dict(first.state_dict())
    assert head + [s.id for s in resumed] == full
    with pytest.raises(DataError, match="other shards"):
        ShardStream(shards).load_state_dict({**first.state_dict(), "shards": ["x.tar"]})


@pytest.fixture
def collator(tokenizer) -> SampleCollator:
    return SampleCollator(tokenizer, CollateConfig(num_image_tokens=4, max_length=128, image_size=16))


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
