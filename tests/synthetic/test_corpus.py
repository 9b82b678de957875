import json

import pytest

from vlstack.data.schema import Sample
from vlstack.data.shards import read_shards
from vlstack.errors import DataError
from vlstack.synthetic.corpus import synthesize
from vlstack.synthetic.defects import DEFECT_TYPES


def test_writes_shards_manifest_ground_truth_and_summary(tmp_path):
    summary = synthesize("caption", 60, tmp_path, defects=0.5, seed=7, samples_per_shard=25)
    assert summary["n"] == 60 and summary["spoiled"] == 30 and summary["clean"] == 30 and summary["shards"] == 3
    assert sum(summary["defects"].values()) == 30
    assert json.loads((tmp_path / "synth.json").read_text()) == summary
    samples = list(read_shards(tmp_path))
    assert len(samples) == 60 and all(isinstance(s, Sample) for s in samples)
    truth = [json.loads(line) for line in (tmp_path / "defects.jsonl").read_text().splitlines()]
    assert truth == [{"id": s.id, **d} for s in samples for d in s.meta["defects"]]
    assert {s.meta["split"] for s in samples} == {"train"}


def test_every_defect_type_is_injected_in_a_full_corpus(tmp_path):
    summary = synthesize("vqa", 2 * len(DEFECT_TYPES) + 1, tmp_path, defects=1.0)
    assert set(summary["defects"]) == set(DEFECT_TYPES) and summary["clean"] == 1


def test_same_arguments_give_identical_shards_and_splits_differ(tmp_path):
    for name, split in (("a", "train"), ("b", "train"), ("c", "test")):
        synthesize("grounding", 12, tmp_path / name, defects=0.5, seed=1, split=split)
    shard = "shard-00000.tar"
    assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()
    train = {s.id: s.images[0].data for s in read_shards(tmp_path / "a")}
    test = {s.id: s.images[0].data for s in read_shards(tmp_path / "c")}
    assert not set(train) & set(test) and not set(train.values()) & set(test.values())


@pytest.mark.parametrize("kind", ["document", "chart", "interleaved"])
def test_other_kinds_write_and_read_back(tmp_path, kind):
    summary = synthesize(kind, 6, tmp_path, defects=0.5, image_size=96)
    assert summary["spoiled"] == 3 and len(list(read_shards(tmp_path))) == 6


def test_bad_arguments_fail_before_writing(tmp_path):
    with pytest.raises(DataError, match="unknown kind"):
        synthesize("video", 5, tmp_path / "x")
    with pytest.raises(DataError, match="unknown split"):
        synthesize("caption", 5, tmp_path / "y", split="dev")
    with pytest.raises(DataError, match="n must be"):
        synthesize("caption", 0, tmp_path / "z")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
