import io
import json
import sys
import tarfile

import pytest
from PIL import Image

from vlstack.data.schema import Rejected, Sample
from vlstack.data.sources import read_coco_captions, read_image_folder, read_img2dataset, read_llava, read_vqav2
from vlstack.errors import DataError


def png(color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, "PNG")
    return buffer.getvalue()


def outcome(items) -> dict[str | None, str]:
    """id -> "ok" for samples, the reason for rejections (anonymous ones under None, last wins)."""
    return {i.id: i.reason if isinstance(i, Rejected) else "ok" for i in items}


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "sub/c.png", "orphan.png"):
        (root / name).write_bytes(png())
    return root


def test_image_folder_with_jsonl_captions(tmp_path, images):
    captions = tmp_path / "captions.jsonl"
    captions.write_text("\n".join([
        json.dumps({"image": "a.png", "caption": "a red square"}),
        "{not json",
        json.dumps({"image": "sub/c.png", "text": "also red", "id": "c-id"}),
        json.dumps({"image": "gone.png", "caption": "missing"}),
        json.dumps({"image": "b.png"}),
    ]))
    items = list(read_image_folder(images, captions))
    assert outcome(items) == {"a": "ok", None: "bad_json", "c-id": "ok", "gone": "missing_image", "b": "bad_record",
                              "orphan": "no_caption"}
    sample = items[0]
    assert sample.kind == "caption" and sample.text == "a red square"
    assert sample.images[0].name == "png" and sample.images[0].data == png()
    assert sample.meta["image_paths"] == ["a.png"]


@pytest.mark.parametrize("suffix, sep", [(".tsv", "\t"), (".csv", ",")])
def test_image_folder_with_tabular_captions(tmp_path, images, suffix, sep):
    captions = tmp_path / f"captions{suffix}"
    captions.write_text(f"image{sep}caption\na.png{sep}one\nb.png{sep}two\nsub/c.png{sep}three\norphan.png{sep}four\n")
    assert [s.text for s in read_image_folder(images, captions)] == ["one", "two", "three", "four"]
    bad = tmp_path / f"bad{suffix}"
    bad.write_text(f"file{sep}text\na.png{sep}x\n")
    assert [r.reason for r in read_image_folder(images, bad) if isinstance(r, Rejected)][0] == "bad_header"


def test_missing_paths_are_an_error_at_once(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list(read_image_folder(tmp_path, tmp_path / "nope.jsonl"))


LLAVA = [
    {"id": "1", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                                    {"from": "gpt", "value": "A red square."}]},
    {"id": "2", "image": "b.png", "conversations": [{"from": "human", "value": "Describe."},
                                                    {"from": "gpt", "value": "Red."}]},
    {"id": "3", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    {"id": "4", "image": "gone.png", "conversations": [{"from": "human", "value": "<image>"},
                                                       {"from": "gpt", "value": "x"}]},
    {"id": "5", "image": "a.png", "conversations": [{"from": "human", "value": "<image> only a question"}]},
    {"id": "6", "image": ["a.png", "b.png"], "conversations": [{"from": "human", "value": "<image> <image> same?"},
                                                              {"from": "gpt", "value": "Yes."}]},
]


def test_llava_json_array(tmp_path, images):
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(LLAVA))
    items = list(read_llava(path, images))
    assert outcome(items) == {"1": "ok", "2": "ok", "3": "ok", "4": "missing_image", "5": "invalid_sample",
                              "6": "ok"}
    assert items[1].conversations[0]["value"] == "<image>\nDescribe."  # placeholder added as LLaVA does
    assert items[2].images == [] and items[2].conversations[0]["value"] == "Hi"  # a text-only chat stays one
    assert [ref.name for ref in items[5].images] == ["0.png", "1.png"]


def test_llava_json_lines_survive_a_malformed_line(tmp_path, images):
    path = tmp_path / "llava.jsonl"
    path.write_text(json.dumps(LLAVA[0]) + "\n{broken\n" + json.dumps(LLAVA[1]) + "\n")
    assert outcome(read_llava(path, images)) == {"1": "ok", None: "bad_json", "2": "ok"}
    (tmp_path / "broken.json").write_text("[{")
    assert outcome(read_llava(tmp_path / "broken.json", images)) == {None: "bad_json"}


def test_coco_captions(tmp_path, images):
    path = tmp_path / "captions_val2017.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "license": 3}, {"id": 2, "file_name": "b.png"},
                   {"id": 3, "file_name": "gone.png"}],
        "annotations": [{"id": 10, "image_id": 1, "caption": "A red square. "},
                        {"id": 11, "image_id": 1, "caption": "Red."}, {"id": 12, "image_id": 3, "caption": "x"},
                        {"id": 13, "image_id": 9, "caption": "?"}, "junk"],
    }))
    items = list(read_coco_captions(path, images))
    assert outcome(items) == {None: "bad_record", "1": "ok", "2": "no_caption", "3": "missing_image",
                              "9": "unknown_image"}
    sample = next(i for i in items if isinstance(i, Sample))
    assert sample.text == "A red square." and sample.answers == ["A red square.", "Red."]
    assert sample.meta["license"] == 3


def test_vqav2(tmp_path, images):
    (images / "COCO_val2014_000000000001.jpg").write_bytes(png())
    questions, annotations = tmp_path / "q.json", tmp_path / "a.json"
    questions.write_text(json.dumps({"data_subtype": "val2014", "questions": [
        {"image_id": 1, "question": "What color?", "question_id": 100},
        {"image_id": 1, "question": "Unanswered?", "question_id": 101},
        {"image_id": 2, "question": "Where is it?", "question_id": 200},
        {"image_id": "x", "question": "Bad?", "question_id": 300},
    ]}))
    answers = [{"answer": "red", "answer_confidence": "yes", "answer_id": k} for k in range(10)]
    annotations.write_text(json.dumps({"annotations": [
        {"question_id": 100, "image_id": 1, "answers": answers, "multiple_choice_answer": "red",
         "answer_type": "other"},
        {"question_id": 200, "image_id": 2, "answers": answers},
    ]}))
    items = list(read_vqav2(questions, annotations, images))
    assert outcome(items) == {"100": "ok", "101": "no_answers", "200": "missing_image", "300": "bad_record"}
    assert items[0].answers == ["red"] * 10 and items[0].images[0].name == "jpg"
    assert items[0].meta["multiple_choice_answer"] == "red"
    custom = list(read_vqav2(questions, annotations, images, image_pattern="sub/c.png"))
    assert outcome(custom)["200"] == "ok"


def write_img2dataset_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_img2dataset_tars(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    meta = json.dumps({"url": "http://example.com/a.jpg", "status": "success"}).encode()
    write_img2dataset_tar(out / "00000.tar", [
        ("000000000.jpg", png()), ("000000000.json", meta), ("000000000.txt", b"a red square"),
        ("000000001.json", meta), ("000000001.txt", b"no image"),
        ("000000002.jpg", png()), ("000000002.json", json.dumps({"caption": "from json"}).encode()),
    ])
    write_img2dataset_tar(out / "00001.tar", [("000010000.jpg", png()), ("000010000.txt", b"cut")])
    cut = (out / "00001.tar").read_bytes()
    (out / "00001.tar").write_bytes(cut[:700])
    items = list(read_img2dataset(out))
    assert outcome(items) == {"000000000": "ok", "000000001": "missing_image", "000000002": "ok",
                              None: "unreadable_shard"}
    assert items[0].text == "a red square" and items[0].meta["url"] == "http://example.com/a.jpg"
    assert items[2].text == "from json"


def test_img2dataset_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"key": ["0", "1", "2"], "caption": ["red", "lost", "blank"], "url": ["u0", "u1", "u2"],
                      "status": ["success", "failed_to_download", "success"], "error_message": [None, "404", None],
                      "jpg": [png(), None, png()]})
    pq.write_table(table, tmp_path / "00000.parquet")
    (tmp_path / "00001.parquet").write_bytes(b"PAR1 not really")
    items = list(read_img2dataset(tmp_path))
    assert outcome(items) == {"0": "ok", "1": "download_failed", "2": "ok", None: "unreadable_parquet"}
    assert items[0].images[0].data == png() and items[0].text == "red"


def test_parquet_without_pyarrow_names_the_package(tmp_path, monkeypatch):
    (tmp_path / "00000.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match="pip install pyarrow"):
        list(read_img2dataset(tmp_path))
