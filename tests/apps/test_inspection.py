import importlib.util
import json
import os

import cv2
import numpy as np
import pytest

from vlstack.apps.detectors import ClassicalDetector, detection_counts, match_boxes, precision_recall
from vlstack.apps.inspection import InspectionConfig, build_detector, frames_from, run_inspection
from vlstack.checkpoint import save_model
from vlstack.cli import main
from vlstack.demo.apps import write_video
from vlstack.errors import ConfigError, InputError
from vlstack.infer.engine import Engine
from vlstack.synthetic.surfaces import surface_set


@pytest.fixture(scope="module")
def line():
    return surface_set(40, seed=0, split="test")


@pytest.mark.parametrize("with_reference", [True, False])
def test_detector_recall_and_precision_on_held_out_surfaces(line, with_reference):
    detector = ClassicalDetector(reference=line.reference if with_reference else None)
    counts = [detection_counts([d.box for d in detector.detect(item.pixels)], [d.box for d in item.defects])
              for item in line.images]
    scores = precision_recall(counts)
    assert scores["true_positives"] + scores["false_negatives"] >= 50  # enough defects to mean something
    assert scores["recall"] >= 0.9 and scores["precision"] >= 0.8, scores


def test_match_boxes_pairs_each_truth_once_by_iou():
    truth = [(0, 0, 10, 10), (20, 20, 30, 30)]
    predicted = [(0, 0, 10, 5), (1, 1, 11, 11), (50, 50, 60, 60)]  # IoU with truth 0: 0.5 and 81/119
    assert match_boxes(predicted, truth) == [(1, 0)]
    assert detection_counts(predicted, truth) == (1, 2, 1)
    assert precision_recall([(1, 2, 1), (0, 0, 0)])["precision"] == pytest.approx(1 / 3)


def test_a_video_file_round_trip(tmp_path, line, nano_model, tokenizer):
    items = line.images[:6]
    video = write_video(tmp_path / "line.avi", [item.pixels for item in items])
    engine = Engine(nano_model, tokenizer)
    summary = run_inspection(video, engine, tmp_path / "out", InspectionConfig(max_new_tokens=3, language="en"),
                             detector=ClassicalDetector(reference=line.reference))
    records = [json.loads(row) for row in (tmp_path / "out" / "report.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["frame"] for r in records] == list(range(6)) and summary["frames"] == 6
    counts = [detection_counts([tuple(d["box"]) for d in r["detections"]], [d.box for d in item.defects])
              for r, item in zip(records, items)]
    assert precision_recall(counts)["recall"] >= 0.9  # the frames survived Motion-JPEG and back
    assert all(isinstance(d["analysis"], str) for r in records for d in r["detections"])
    assert summary["status"] == "complete" and summary["frames_per_second"] > 0
    assert summary["defects"] == sum(len(r["detections"]) for r in records)
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    for annotated in summary["annotated"]:
        assert annotated["image"] in page and (tmp_path / "out" / annotated["image"]).is_file()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["frames"] == 6


def test_image_folders_and_iterables_are_sources_too(tmp_path, line):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, item in enumerate(line.images[:3]):
        cv2.imwrite(str(folder / f"{i:02d}.png"), cv2.cvtColor(item.pixels, cv2.COLOR_RGB2BGR))
    (folder / "03.png").write_bytes(b"not a png")
    summary = run_inspection(folder, None, tmp_path / "out", InspectionConfig(max_frames=10))
    records = [json.loads(row) for row in (tmp_path / "out" / "report.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == 4 and records[3] == {"frame": 3, "source": "03.png",
                                                "skipped": "OpenCV cannot decode the image"}
    assert summary["unreadable_frames"] == 1 and summary["model"] is None
    assert all(d["analysis"] is None for r in records[:3] for d in r["detections"])  # no model: detector only

    frames = [item.image for item in line.images[:5]]  # PIL images
    summary = run_inspection(iter(frames), None, tmp_path / "out2", InspectionConfig(max_frames=2))
    assert summary["frames"] == 2 and summary["source"] == "a Python iterable"


def test_unreadable_sources_are_clear_errors(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(os.urandom(4000))
    with pytest.raises(InputError, match="cannot open .*broken.mp4 as a video"):
        frames_from(tmp_path / "broken.mp4")
    with pytest.raises(InputError, match="does not exist"):
        frames_from(tmp_path / "missing.avi")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        frames_from(tmp_path / "empty")
    with pytest.raises(InputError, match="frame 0 of the iterable"):
        next(frames_from([np.zeros((4, 4), np.float32)]))
    with pytest.raises(InputError, match="reference image .* cannot be read"):
        build_detector(InspectionConfig(reference=str(tmp_path / "missing.png")))
    with pytest.raises(InputError, match="reference image is 8x8 but the frame is 4x4"):
        ClassicalDetector(reference=np.zeros((8, 8, 3), np.uint8)).detect(np.zeros((4, 4, 3), np.uint8))


@pytest.mark.skipif(importlib.util.find_spec("ultralytics") is not None, reason="ultralytics is installed")
def test_the_yolo_adapter_names_the_package_it_needs(tmp_path):
    with pytest.raises(ConfigError, match="pip install ultralytics"):
        build_detector(InspectionConfig(detector="yolo", yolo_weights=str(tmp_path / "best.pt")))
    with pytest.raises(ConfigError, match="needs yolo_weights"):
        InspectionConfig(detector="yolo")


def test_cli_inspects_a_folder(tmp_path, line, nano_model, tokenizer, capsys):
    save_model(nano_model, tmp_path / "ckpt", tokenizer=tokenizer)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, item in enumerate(line.images[:2]):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(item.pixels, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "good.png"), cv2.cvtColor(line.reference, cv2.COLOR_RGB2BGR))
    assert main(["inspect", str(folder), "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"),
                 "--reference", str(tmp_path / "good.png"), "--set", "max_new_tokens=2"]) == 0
    defects = sum(len(item.defects) for item in line.images[:2])
    assert f"2 frames, {defects} defects" in capsys.readouterr().out
