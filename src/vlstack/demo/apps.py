"""One short, checkable run of each application, for `vlstack demo` (which calls these with its checkpoint).

`medical_demo` writes a study folder the way a PACS export looks, identifiers included
(synthetic scans saved as CT DICOM with fake patient details, a few of pydicom's shipped
files, a file that is not DICOM and a truncated one), runs the assistant on it, checks
every output file for every identifier the inputs held, and scores the findings on the
synthetic scans against their lesions. `inspection_demo` writes a production-line video
of synthetic surfaces, inspects it, and scores the detector (precision/recall) and the
model's defect types against the drawn defects. `pointcloud_demo` trains the point-cloud encoder on
synthetic shapes. Each returns a dict of figures.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydicom.data import get_testdata_file

from vlstack.apps.deid import Deidentifier
from vlstack.apps.detectors import ClassicalDetector, detection_counts, match_boxes, precision_recall
from vlstack.apps.dicom import write_dicom
from vlstack.apps.inspection import InspectionConfig, run_inspection
from vlstack.apps.medical import MedicalConfig, run_medical
from vlstack.apps.pointcloud import PointCloudSet, ShapeClassificationConfig, train_shape_classifier
from vlstack.models.pointcloud import PointCloudConfig
from vlstack.synthetic.pointclouds import POINT_SHAPES, point_cloud_tensors, point_clouds
from vlstack.synthetic.scans import read_findings, scan
from vlstack.synthetic.scenes import Language, split_seed
from vlstack.synthetic.surfaces import read_defect_type, surface_set

DEMO_KEY = b"vlstack-demo-key"
"""The demo's pseudonymisation key: fixed, so the demo can find its own series in the report."""
PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm")
"""Shipped inside pydicom's wheel: a CT, an MR and a 15-frame RT dose (the middle frame is rendered)."""


def medical_demo(checkpoint: str | Path, out_dir: str | Path, scans: int = 4, max_new_tokens: int = 32,
                 lang: Language = "en", seed: int = 0) -> dict[str, Any]:
    """Run the medical assistant on a written study folder; returns the figures for the demo report."""
    started = time.perf_counter()
    out = Path(out_dir)
    shutil.rmtree(out / "study", ignore_errors=True)
    truth_by_series, identifiers = write_demo_study(out / "study", scans, seed)
    report = run_medical(out / "study", checkpoint, out / "medical",
                         MedicalConfig(language=lang, max_new_tokens=max_new_tokens), key=DEMO_KEY)
    pseudonyms = {Deidentifier(DEMO_KEY).uid(uid): truth for uid, truth in truth_by_series.items()}
    scored = [(read_findings(s.get("findings", "")), pseudonyms[s["series"]])
              for study in report["studies"] for s in study["series"] if s["series"] in pseudonyms]
    lesion_right = [found["lesion"] == (truth is not None) for found, truth in scored]
    side_right = [found["side"] == truth for found, truth in scored if truth is not None]
    majority = Counter(truth is not None for _, truth in scored).most_common(1)[0][1] / len(scored) if scored else 0.0
    return {
        "studies": report["counts"]["studies"], "series": report["counts"]["series"],
        "answered": report["counts"]["answered"], "files_skipped": report["counts"]["files_skipped"],
        "skip_reasons": dict(Counter(s["reason"] for s in report["skipped"])),
        "identifiers_checked": len(identifiers), "identifier_leaks": find_leaks(out / "medical", identifiers),
        "scans_scored": len(scored), "lesion_accuracy": _mean(lesion_right),
        "lesion_majority_baseline": round(majority, 3), "side_accuracy": _mean(side_right),
        "off_template": sum(found["lesion"] is None for found, _ in scored),
        "report": str(out / "medical" / "report.html"), "seconds": round(time.perf_counter() - started, 1),
    }


def inspection_demo(checkpoint: str | Path | None, out_dir: str | Path, frames: int = 8, max_new_tokens: int = 24,
                    lang: Language = "en", seed: int = 0) -> dict[str, Any]:
    """Inspect a written production-line video; returns detector precision/recall, frames/s and how often the
    model names the defect type of a correct detection."""
    started = time.perf_counter()
    out = Path(out_dir)
    line = surface_set(frames, seed, "test")
    video = write_video(out / "line.avi", [item.pixels for item in line.images])
    config = InspectionConfig(language=lang, max_new_tokens=max_new_tokens)
    summary = run_inspection(video, checkpoint, out / "inspection", config,
                             detector=ClassicalDetector(config.classical, line.reference))
    lines = (out / "inspection" / "report.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(row) for row in lines]
    counts, typed = [], []
    for record, item in zip(records, line.images):
        boxes, truth = [tuple(d["box"]) for d in record["detections"]], [d.box for d in item.defects]
        counts.append(detection_counts(boxes, truth))
        typed += [read_defect_type(record["detections"][p]["analysis"] or "") == item.defects[t].type
                  for p, t in match_boxes(boxes, truth)]
    local = ClassicalDetector(config.classical)  # no reference: local anomalies only
    local_counts = [detection_counts([d.box for d in local.detect(item.pixels)], [d.box for d in item.defects])
                    for item in line.images]
    types = Counter(d.type for item in line.images for d in item.defects)
    reference, anomaly = precision_recall(counts), precision_recall(local_counts)
    return {
        "frames": summary["frames"], "defects": sum(types.values()), "detections": summary["defects"],
        "precision": round(reference["precision"], 3), "recall": round(reference["recall"], 3),
        "local_precision": round(anomaly["precision"], 3), "local_recall": round(anomaly["recall"], 3),
        "frames_per_second": summary["frames_per_second"],
        "detector_frames_per_second": summary["detector_frames_per_second"],
        "type_accuracy": _mean(typed) if checkpoint else None,
        "type_majority_baseline": round(types.most_common(1)[0][1] / sum(types.values()), 3),
        "report": str(out / "inspection" / "report.html"), "seconds": round(time.perf_counter() - started, 1),
    }


def pointcloud_demo(train_clouds: int = 1000, test_clouds: int = 200, cloud_points: int = 128, steps: int = 200,
                    seed: int = 0) -> dict[str, Any]:
    """Train a narrow point-cloud encoder on synthetic clouds of the five shapes (randomly rotated, scaled,
    shifted and noisy) and score it on the held-out test split (chance 1/5): a few seconds on one core."""
    def cloud_set(n: int, split: str) -> PointCloudSet:
        points, labels = point_cloud_tensors(point_clouds(n, seed, split, num_points=cloud_points, noise=0.01))
        return PointCloudSet(points, labels, POINT_SHAPES)

    config = ShapeClassificationConfig(
        encoder=PointCloudConfig(num_points=cloud_points, widths=(32, 64, 128), num_tokens=4, group_size=8),
        seed=seed)
    config.train.steps, config.train.warmup_steps = steps, steps // 10
    return train_shape_classifier(cloud_set(train_clouds, "train"), cloud_set(test_clouds, "test"), config)[1]


def write_demo_study(folder: Path, scans: int, seed: int = 0) -> tuple[dict[str, str | None], dict[str, str]]:
    """A study folder with identifiers: `scans` synthetic scans (two series per fake patient, each written as
    CT with fake name, ID, birth date, address, institution), pydicom's shipped files, a text file and a
    truncated DICOM. Returns {original Series Instance UID: lesion side or None} for the synthetic scans and
    {field: value} of every identifier written (the values no output may contain)."""
    rng = random.Random(seed)
    truth: dict[str, str | None] = {}
    identifiers: dict[str, str] = {}
    stream = split_seed(seed, "test")
    for i in range(scans):
        patient = i // 2
        phi = {"PatientName": f"Testperson^Demo{patient:02d}", "PatientID": f"MRN{rng.randint(10**7, 10**8)}",
               "PatientBirthDate": f"19{rng.randint(40, 99)}0{rng.randint(1, 9)}1{rng.randint(0, 9)}",
               "PatientAddress": f"{rng.randint(10, 99)} Demo Street, Exampletown",
               "InstitutionName": "Exampletown General Hospital", "ReferringPhysicianName": "Doctor^Referring",
               "AccessionNumber": f"ACC{rng.randint(10**5, 10**6)}"}
        study_uid = f"1.2.826.0.1.3680043.10.511.{seed}.{patient}"
        series_uid = f"{study_uid}.{i}"
        item = scan(stream, i)
        # stored = 8 * gray, HU = stored - 1024; this window maps HU back onto the gray levels exactly
        write_dicom(folder / f"{phi['PatientName'].replace('^', '_')}" / f"scan{i}.dcm",
                    item.pixels.astype(np.uint16) * 8, Modality="CT", BodyPartExamined="CHEST",
                    StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, SOPInstanceUID=f"{series_uid}.1",
                    RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=-3.5, WindowWidth=2041,
                    PatientSex="F" if patient % 2 else "M", PatientAge=f"0{40 + patient}Y", **phi)
        truth[series_uid] = item.lesion.side if item.lesion else None
        identifiers.update({f"{k}[{i}]": v for k, v in phi.items()} | {f"StudyInstanceUID[{i}]": study_uid,
                                                                      f"SeriesInstanceUID[{i}]": series_uid})
    for name in PYDICOM_FILES:
        shutil.copy(get_testdata_file(name), folder / name)
    identifiers.update({"PatientName[CT_small]": "CompressedSamples^CT1", "OtherPatientIDs[CT_small]": "ABCD1234",
                        "InstitutionName[CT_small]": "JFK IMAGING CENTER", "StationName[CT_small]": "CT01_OC0",
                        "StudyInstanceUID[CT_small]": "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322",
                        "PatientName[rtdose]": "Lastname^Firstname"})
    (folder / "notes.txt").write_text("not an image\n", encoding="utf-8")
    (folder / "truncated.dcm").write_bytes(Path(get_testdata_file("MR_small.dcm")).read_bytes()[:400])
    return truth, identifiers


def find_leaks(folder: Path, identifiers: dict[str, str]) -> list[str]:
    """The identifier fields whose value (or a '^'-separated name part) occurs in any file under `folder`."""
    contents = b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())
    leaks = []
    for field, value in identifiers.items():
        parts = {value, *(p for p in value.replace("^", " ").split() if len(p) >= 5)}
        if any(part.encode() in contents for part in parts):
            leaks.append(field)
    return leaks


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    """RGB frames -> a Motion-JPEG AVI (an encoder built into every OpenCV)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path


def _mean(values: list[bool]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None
