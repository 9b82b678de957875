"""Streaming batches: an order no number of ranks changes, mixing by weight, exact positions, bad shards skipped."""

import random
from collections import Counter

import pytest
import torch

from vlstack.data.schema import Sample
from vlstack.data.stream import Skip, StreamConfig, StreamingBatches, StreamPlan, StreamSource
from vlstack.errors import ConfigError, DataError
from vlstack.synthetic.corpus import synthesize


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two caption corpora: 60 samples in 6 shards, 20 samples in 2 shards."""
    root = tmp_path_factory.mktemp("stream")
    big, small = root / "big", root / "small"
    synthesize("caption", 60, big, seed=1, samples_per_shard=10)
    synthesize("caption", 20, small, seed=2, samples_per_shard=10)
    return big, small


def ids_of(sample: Sample, rng: random.Random) -> dict:
    return {"id": sample.id}


def collate_ids(items: list[dict]) -> dict:
    return {"row": torch.tensor([int(item["id"].rsplit("-", 1)[-1]) for item in items])}


def test_an_epoch_visits_every_sample_once_in_a_seeded_order(corpora):
    big, _ = corpora
    plan = StreamPlan([StreamSource(str(big))], global_batch=12, seed=3)
    first = [slot for _ in range(5) for slot in plan.next_batch()]  # 60 slots: exactly epoch 0
    assert {s[1] for s in first} == {0} and len({(s[2], s[3]) for s in first}) == 60
    again = StreamPlan([StreamSource(str(big))], global_batch=12, seed=3)
    assert [slot for _ in range(5) for slot in again.next_batch()] == first
    second = [slot for _ in range(5) for slot in plan.next_batch()]
    assert {s[1] for s in second} == {1} and [s[2:] for s in second] != [s[2:] for s in first]  # a new order


def test_resuming_on_another_number_of_ranks_neither_repeats_nor_skips(corpora):
    big, _ = corpora
    config = StreamConfig(workers=2)
    uninterrupted = StreamingBatches([StreamSource(str(big))], 12, ids_of, collate_ids, seed=5, config=config)
    expected = [uninterrupted.next()["row"].tolist() for _ in range(5)]  # one epoch, one rank

    ranks = [StreamingBatches([StreamSource(str(big))], 12, ids_of, collate_ids, seed=5, config=config)
             for _ in range(2)]
    seen = [ranks[0].next(0, 2)["row"].tolist() + ranks[1].next(1, 2)["row"].tolist() for _ in range(2)]
    assert seen == expected[:2]  # two ranks take the halves of the same global batches
    resumed = StreamingBatches([StreamSource(str(big))], 12, ids_of, collate_ids, seed=5, config=config)
    resumed.load_state_dict(ranks[0].state_dict())
    seen += [resumed.next()["row"].tolist() for _ in range(3)]  # the rest of the epoch on one rank
    assert seen == expected
    assert Counter(row for batch in seen for row in batch) == Counter(range(60))


def test_sources_mix_by_weight_and_each_repeats_at_its_own_pace(corpora):
    big, small = corpora
    plan = StreamPlan([StreamSource(str(big), 1.0), StreamSource(str(small), 3.0)], global_batch=40, seed=0)
    slots = [slot for _ in range(50) for slot in plan.next_batch()]
    share = sum(s[0] == 1 for s in slots) / len(slots)
    assert 0.72 < share < 0.78  # probability 3 / (1 + 3)
    epochs = Counter((s[0], s[1]) for s in slots)
    assert epochs[(1, 0)] == 20 and max(e for s, e in epochs if s == 1) >= 70  # 20 samples, drawn ~1,500 times
    with pytest.raises(ConfigError, match="weights must be positive"):
        StreamPlan([StreamSource(str(big), 0.0)], global_batch=4)


def test_a_saved_position_belongs_to_its_sources(corpora):
    big, small = corpora
    state = StreamPlan([StreamSource(str(big))], global_batch=4).state_dict()
    with pytest.raises(DataError, match="other sources or shards"):
        StreamPlan([StreamSource(str(small))], global_batch=4).load_state_dict(state)
    with pytest.raises(DataError, match="no shard manifest"):
        StreamPlan([StreamSource(str(big.parent))], global_batch=4)


def test_damaged_shards_and_refused_samples_are_skipped_and_accounted_for(tmp_path):
    corpus = tmp_path / "corpus"
    synthesize("caption", 30, corpus, seed=1, samples_per_shard=10)
    (corpus / "shard-00001.tar").write_bytes(b"not a tar at all" * 64)  # 10 samples unreadable
    tar = corpus / "shard-00002.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # cut in the middle: the rest is lost

    def refuse_some(sample: Sample, rng: random.Random) -> dict:
        if sample.id.endswith("000003"):
            raise Skip("too_long", "refused by the test")
        return {"id": sample.id}

    stream = StreamingBatches([StreamSource(str(corpus))], 10, refuse_some, collate_ids, seed=0,
                              config=StreamConfig(workers=1))
    rows = [row for _ in range(3) for row in stream.next().get("row", torch.tensor([])).tolist()]
    [report] = stream.finished_epochs()
    assert report["samples"] == 30 and 30 - sum(report["skipped_by_reason"].values()) == len(rows)  # the rest trained
    assert report["skipped_by_reason"]["unreadable_shard"] == 10 and report["skipped_by_reason"]["too_long"] == 1
    assert report["skipped_by_reason"]["lost_in_shard"] >= 1  # the samples after the cut
    assert stream.finished_epochs() == []  # reported once
