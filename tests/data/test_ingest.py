"""`vlstack data ingest`: every public format to shards, every record kept or rejected, and `data clean` reads it."""

import io
import json

import pytest
from PIL import Image

from vlstack.cli import main
from vlstack.data.schema import Sample
from vlstack.data.shards import read_shards
from vlstack.files import read_jsonl


def photo(seed: int, size: int = 48) -> bytes:
    """A distinct, textured JPEG (flat colours would look alike to the cleaning stages)."""
    pixels = Image.effect_noise((size, size), 40 + seed).convert("RGB")
    pixels = Image.blend(pixels, Image.new("RGB", (size, size), (seed * 37 % 256, 90, 200)), 0.5)
    buffer = io.BytesIO()
    pixels.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def ingested(out) -> tuple[dict, list[Sample], list[dict]]:
    summary = json.loads((out / "ingest.json").read_text())
    samples = list(read_shards(out))
    rejected = [record for _, record in read_jsonl(out / "rejected.jsonl")]
    assert all(isinstance(s, Sample) for s in samples)
    assert summary["kept"] == len(samples) and summary["rejected"] == len(rejected)  # every record accounted for
    return summary, samples, rejected


def run(*argv) -> int:
    return main(["data", *map(str, argv)])


def test_image_folder_then_clean(tmp_path, capsys):
    images = tmp_path / "photos"
    images.mkdir()
    for k in range(4):
        (images / f"{k}.jpg").write_bytes(photo(k))
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    captions = tmp_path / "captions.jsonl"
    lines = [{"image": f"{k}.jpg", "caption": f"a photograph of a quiet street number {k}"} for k in range(4)]
    lines += [{"image": "gone.jpg", "caption": "missing"}, {"image": "broken.jpg", "caption": "a broken file"}]
    captions.write_text("\n".join(map(json.dumps, lines)) + "\n{oops\n")
    assert run("ingest", "folder", images, tmp_path / "raw", "--captions", captions) == 0
    assert "kept 5 of 7" in capsys.readouterr().out
    summary, samples, rejected = ingested(tmp_path / "raw")
    assert {r["reason"] for r in rejected} == {"missing_image", "bad_json"}
    assert summary["kinds"] == {"caption": 5}

    assert run("clean", tmp_path / "raw", tmp_path / "clean", "--set", "perplexity.enabled=false") == 0
    clean = json.loads((tmp_path / "clean" / "clean.json").read_text())
    assert clean["total"] == 5 and clean["kept"] == 4 and clean["unaccounted"] == []
    assert [json.loads(line)["id"] for line in (tmp_path / "clean" / "rejected.jsonl").open()] == ["broken"]


def test_llava_keeps_text_only_chats_and_they_clean(tmp_path):
    (tmp_path / "a.jpg").write_bytes(photo(1))
    records = [
        {"id": "seen", "image": "a.jpg", "conversations": [{"from": "human", "value": "What is shown?"},
                                                           {"from": "gpt", "value": "A street at night."}]},
        {"id": "chat", "conversations": [{"from": "human", "value": "Write a haiku about rain."},
                                         {"from": "gpt", "value": "Soft rain on the roof, the garden drinks."}]},
        {"id": "lost", "image": "missing.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                                 {"from": "gpt", "value": "x"}]},
        {"id": "bad", "image": "a.jpg", "conversations": "not a list"},
    ]
    (tmp_path / "llava.json").write_text(json.dumps(records))
    assert run("ingest", "llava", tmp_path / "llava.json", tmp_path / "raw") == 0
    summary, samples, rejected = ingested(tmp_path / "raw")
    assert [s.id for s in samples] == ["seen", "chat"] and summary["text_only"] == 1
    assert samples[1].images == [] and samples[0].conversations[0]["value"] == "<image>\nWhat is shown?"
    assert {r["id"]: r["reason"] for r in rejected} == {"lost": "missing_image", "bad": "bad_record"}
    assert run("clean", tmp_path / "raw", tmp_path / "clean", "--set", "perplexity.enabled=false") == 0
    assert [s.id for s in read_shards(tmp_path / "clean")] == ["seen", "chat"]


def write_img2dataset(folder) -> None:
    import tarfile

    folder.mkdir()
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for name, data in [("000000000.jpg", photo(3)), ("000000000.txt", b"a red bus"),
                           ("000000000.json", json.dumps({"url": "http://x/0.jpg", "key": "000000000"}).encode()),
                           ("000000001.txt", b"no image came")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_img2dataset_output_goes_through_clean(tmp_path):
    write_img2dataset(tmp_path / "download")
    assert run("ingest", "img2dataset", tmp_path / "download", tmp_path / "raw") == 0
    _, samples, rejected = ingested(tmp_path / "raw")
    assert [s.text for s in samples] == ["a red bus"] and [r["reason"] for r in rejected] == ["missing_image"]
    assert run("clean", tmp_path / "raw", tmp_path / "clean", "--set", "perplexity.enabled=false") == 0
    assert json.loads((tmp_path / "clean" / "clean.json").read_text())["kept"] == 1


def test_hf_save_to_disk_and_parquet(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    split = {"image": [Image.open(io.BytesIO(photo(k))) for k in range(3)], "caption": ["one", "two", "three"]}
    corpus = datasets.DatasetDict({"train": datasets.Dataset.from_dict(split, features=features),
                                   "validation": datasets.Dataset.from_dict({k: v[:1] for k, v in split.items()},
                                                                            features=features)})
    corpus.save_to_disk(str(tmp_path / "captions"))
    assert run("ingest", "hf", tmp_path / "captions", tmp_path / "a") == 0
    _, samples, _ = ingested(tmp_path / "a")
    assert [(s.id, s.text) for s in samples] == [("train-000000000", "one"), ("train-000000001", "two"),
                                                ("train-000000002", "three"), ("validation-000000000", "one")]
    assert samples[0].images[0].name == "jpg"

    chats = datasets.Dataset.from_dict({
        "id": ["chat", "cauldron", "vqa", "none"],
        "images": [[photo(1)], [photo(2)], [photo(4)], []],
        "messages": [[{"role": "user", "content": [{"type": "image", "text": None},
                                                   {"type": "text", "text": "What is it?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "A photo."}]}], None, None, None],
        "texts": [None, [{"user": "Colour?", "assistant": "Blue."}], None, None],
        "question": [None, None, "How many?", None],
        "answers": [None, None, [{"answer": "2", "answer_id": 1}, {"answer": "two", "answer_id": 2}], None],
    })
    chats.to_parquet(str(tmp_path / "chats" / "data" / "train-00000.parquet"))
    (tmp_path / "chats" / "data" / "broken.parquet").write_bytes(b"PAR1 cut short")
    assert run("ingest", "hf", tmp_path / "chats", tmp_path / "b") == 0
    _, samples, rejected = ingested(tmp_path / "b")
    by_id = {s.id: s for s in samples}
    assert by_id["chat"].conversations[0]["value"] == "<image>\nWhat is it?" and len(by_id["chat"].images) == 1
    assert by_id["cauldron"].conversations == [{"from": "human", "value": "<image>\nColour?"},
                                               {"from": "gpt", "value": "Blue."}]
    assert by_id["vqa"].answers == ["2", "two"]
    assert {(r["id"], r["reason"]) for r in rejected} == {("none", "bad_record"), (None, "unreadable_parquet")}


def test_missing_arguments_and_foreign_output_folders_are_errors(tmp_path, capsys):
    (tmp_path / "captions.json").write_text("{}")
    assert run("ingest", "coco", tmp_path / "captions.json", tmp_path / "out") == 2
    assert "format 'coco' needs --images" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    write_img2dataset(tmp_path / "download")
    assert run("ingest", "img2dataset", tmp_path / "download", tmp_path / "mine") == 2
    assert "holds no earlier ingest" in capsys.readouterr().err and (tmp_path / "mine" / "notes.txt").exists()
    assert run("ingest", "img2dataset", tmp_path / "download", tmp_path / "raw") == 0
    assert run("ingest", "img2dataset", tmp_path / "download", tmp_path / "raw") == 0  # an earlier ingest: rewritten
