import io
import json
import tarfile

import pytest

from vlstack.data.schema import ImageRef, Rejected, Sample
from vlstack.data.shards import MANIFEST, ShardWriter, iter_tar, read_manifest, read_shards, write_shards
from vlstack.errors import DataError
from vlstack.synthetic.scenes import caption_sample, interleaved_sample


def corpus(n: int) -> list[Sample]:
    return [caption_sample(0, i) for i in range(n - 1)] + [interleaved_sample(0, 0)]


def split(items):
    items = list(items)
    return [i for i in items if isinstance(i, Sample)], [i for i in items if isinstance(i, Rejected)]


def test_round_trip_keeps_every_field_and_byte(tmp_path):
    samples = corpus(7)
    shards = write_shards(samples, tmp_path, samples_per_shard=3)
    assert [s.shard for s in shards] == ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    assert [s.count for s in shards] == [3, 3, 1]
    assert read_manifest(tmp_path) == shards
    assert [s.ids for s in shards] == [[s.id for s in samples[:3]], [s.id for s in samples[3:6]], [samples[6].id]]
    read, rejected = split(read_shards(tmp_path))
    assert read == samples and rejected == []
    assert not list(tmp_path.glob("*.tmp"))


def test_members_follow_webdataset_naming(tmp_path):
    write_shards(corpus(2), tmp_path)
    with tarfile.open(tmp_path / "shard-00000.tar") as tar:
        assert tar.getnames() == ["000000000.png", "000000000.json", "000000001.0.png", "000000001.1.png",
                                  "000000001.2.png", "000000001.json"][: len(tar.getnames())]


def test_same_samples_give_identical_shard_bytes(tmp_path):
    write_shards(corpus(3), tmp_path / "a")
    write_shards(corpus(3), tmp_path / "b")
    assert (tmp_path / "a/shard-00000.tar").read_bytes() == (tmp_path / "b/shard-00000.tar").read_bytes()


def test_webdataset_reads_our_shards(tmp_path):
    wds = pytest.importorskip("webdataset")
    samples = corpus(3)
    write_shards(samples, tmp_path)
    records = list(wds.WebDataset(str(tmp_path / "shard-00000.tar"), shardshuffle=False))
    assert [json.loads(r["json"])["id"] for r in records] == [s.id for s in samples]
    assert records[0]["png"] == samples[0].images[0].data


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.97])
def test_truncated_shard_yields_the_readable_part_and_reports_the_rest_by_id(tmp_path, keep):
    samples = corpus(6)
    write_shards(samples, tmp_path, samples_per_shard=3)
    path = tmp_path / "shard-00000.tar"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    read, rejected = split(read_shards(tmp_path))
    assert read[-3:] == samples[3:]  # the next shard is untouched
    good = read[:-3]
    assert good == samples[: len(good)]
    assert [r.id for r in rejected if r.id is not None] == [s.id for s in samples[len(good) : 3]]
    assert "unreadable_shard" in {r.reason for r in rejected}
    assert all(r.source.startswith(str(path)) for r in rejected)


def test_garbage_and_missing_shards_are_reported(tmp_path):
    samples = corpus(4)
    write_shards(samples, tmp_path, samples_per_shard=2)
    (tmp_path / "shard-00000.tar").write_bytes(b"not a tar at all" * 40)
    (tmp_path / "shard-00001.tar").unlink()
    read, rejected = split(read_shards(tmp_path))
    assert read == []
    assert [r.id for r in rejected] == [s.id for s in samples]
    assert [r.reason for r in rejected] == ["unreadable_shard"] * 2 + ["missing_shard"] * 2


def sample_json(sample_id, image):
    return json.dumps({"id": sample_id, "kind": "caption", "images": [image], "text": "t"}).encode()


def test_bad_members_are_rejected_without_a_manifest(tmp_path):
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        for name, data in [("a.json", b"{oops"), ("b.png", b"img"), ("c.png", b"img"),
                           ("c.json", sample_json("c", "jpg")), ("d.json", sample_json("d", "png")), ("d.png", b"img")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    read, rejected = split(read_shards(tmp_path))
    assert [s.id for s in read] == ["d"]
    assert [(r.id, r.reason) for r in rejected] == [(None, "bad_json"), (None, "missing_json"), ("c", "missing_image")]


def test_iter_tar_never_raises_on_a_cut_archive(tmp_path):
    write_shards(corpus(3), tmp_path)
    path = tmp_path / "shard-00000.tar"
    path.write_bytes(path.read_bytes()[:700])
    items = list(iter_tar(path))
    assert isinstance(items[-1], Rejected) and items[-1].reason == "unreadable_shard"


def test_writer_refuses_samples_without_bytes_or_invalid(tmp_path):
    with ShardWriter(tmp_path) as writer:
        with pytest.raises(DataError, match="no bytes"):
            writer.write(Sample("x", "caption", [ImageRef("png")], text="t"))
        with pytest.raises(DataError, match="field 'text'"):
            writer.write(Sample("x", "caption", [ImageRef("png", b"x")]))
    assert (tmp_path / MANIFEST).read_text() == ""
