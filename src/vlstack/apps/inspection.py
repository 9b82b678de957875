"""The inspection pipeline: frames -> detector -> a crop per defect -> the model's analysis -> a live report.

Frames come from a folder of images, a video file (OpenCV) or any Python iterable of
RGB arrays or PIL images. Each frame goes through a detector (`detectors.py`); each box
is cropped with some context and analysed by the model through the Engine, all crops of
a frame in one batch. Every frame's result is appended to `report.jsonl` and flushed at
once, so another process can follow the stream; `summary.json` and `report.html` (with
annotated frames) are written at the end, and also when the run stops part-way.
Frames per second are measured end to end and for the detector alone.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image

from vlstack import __version__
from vlstack.apps.detectors import ClassicalConfig, ClassicalDetector, Detection, Detector, YoloDetector
from vlstack.apps.report import Figure, Gallery, write_page
from vlstack.config import to_dict
from vlstack.errors import ConfigError, InputError
from vlstack.files import write_json
from vlstack.infer.engine import Engine, EngineConfig, Request
from vlstack.progress import progress_bar

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
FrameSource = str | Path | Iterable[np.ndarray | Image.Image]
INSPECTION_PROMPTS: dict[str, str] = {
    "zh": "描述缺陷类型、严重程度和可能成因",
    "en": "Describe the defect type, its severity and the likely cause.",
}
"""The inspection assistant's prompt for a defect crop: the article's Chinese wording and an English alternative."""


@dataclass
class InspectionConfig:
    """Detector, prompt and report settings of an inspection run."""

    device: str = "auto"
    """Where the model runs: auto (CUDA when a GPU is present, else cpu), cpu, cuda or cuda:N."""
    language: Literal["zh", "en"] = "zh"
    """Language of the default prompt: the article's Chinese inspection prompt, or its English alternative."""
    prompt: str = ""
    """The question asked about every defect crop; empty: `INSPECTION_PROMPTS[language]`."""
    max_new_tokens: int = 48
    detector: Literal["classical", "yolo"] = "classical"
    reference: str | None = None
    """An image of a good part (the frames' size) for the classical detector; None: local anomalies."""
    classical: ClassicalConfig = field(default_factory=ClassicalConfig)
    yolo_weights: str | None = None
    """An ultralytics weights file (.pt), for detector=yolo."""
    yolo_confidence: float = 0.25
    crop_size: int = 48
    """Side of the square crop around each box that the model sees (grown to hold a larger box)."""
    max_frames: int | None = None
    """Stop after this many frames (a camera stream never ends); None: the whole source."""
    annotated_frames: int = 12
    """How many frames with defects are saved, boxes drawn, for the HTML summary."""

    def __post_init__(self) -> None:
        if self.language not in INSPECTION_PROMPTS:
            raise ConfigError(f"language must be one of {', '.join(INSPECTION_PROMPTS)}, got {self.language!r}")
        if self.detector == "yolo" and not self.yolo_weights:
            raise ConfigError("detector=yolo needs yolo_weights, the path of an ultralytics weights file")
        if self.detector not in ("classical", "yolo"):
            raise ConfigError(f"detector must be 'classical' or 'yolo', got {self.detector!r}")

    @property
    def question(self) -> str:
        return self.prompt or INSPECTION_PROMPTS[self.language]


@dataclass
class Frame:
    index: int
    name: str
    pixels: np.ndarray | None
    """uint8 RGB [H, W, 3]; None when the frame could not be read (then `error` says why)."""
    error: str | None = None


def frames_from(source: FrameSource) -> Iterator[Frame]:
    """The frames of an image folder (name order), a video file, or an iterable of RGB arrays / PIL images.

    A missing path, an empty folder or a file OpenCV cannot open as a video is an InputError at once,
    before any frame is read.
    """
    if not isinstance(source, (str, Path)):
        return _iterable_frames(source)
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"image folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return _folder_frames(files)
    if not path.is_file():
        raise InputError(f"inspection source {path} does not exist; give an image folder or a video file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise InputError(f"cannot open {path} as a video: OpenCV knows no container or codec for it "
                         "(give an image folder, or a video such as .mp4 or .avi)")
    return _video_frames(capture, path)


def build_detector(config: InspectionConfig) -> Detector:
    if config.detector == "yolo":
        return YoloDetector(config.yolo_weights, config.yolo_confidence)
    reference = None
    if config.reference:
        reference = cv2.imread(config.reference, cv2.IMREAD_COLOR)
        if reference is None:
            raise InputError(f"reference image {config.reference} cannot be read")
        reference = cv2.cvtColor(reference, cv2.COLOR_BGR2RGB)
    return ClassicalDetector(config.classical, reference)


def run_inspection(source: FrameSource, model: Engine | str | Path | None, out_dir: str | Path,
                   config: InspectionConfig | None = None, detector: Detector | None = None) -> dict[str, Any]:
    """Inspect every frame of `source`; `model` None runs the detector alone. `detector` replaces the one the
    config describes (e.g. a classical detector built with an in-memory reference). Returns the summary."""
    config = config or InspectionConfig()
    out = Path(out_dir)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    detector = detector or build_detector(config)
    engine = model
    if isinstance(model, (str, Path)):
        engine = Engine.from_checkpoint(model, EngineConfig(device=config.device))
    summary: dict[str, Any] = {
        "tool": "vlstack inspect", "vlstack": __version__, "status": "running",
        "source": str(source) if isinstance(source, (str, Path)) else "a Python iterable",
        "model": str(model) if isinstance(model, (str, Path)) else ("in-memory Engine" if model else None),
        "prompt": config.question if engine else None, "config": to_dict(config),
        "frames": 0, "unreadable_frames": 0, "frames_with_defects": 0, "defects": 0, "labels": {},
        "detector_seconds": 0.0, "analysis_seconds": 0.0, "annotated": [],
    }
    started = time.perf_counter()
    try:
        with open(out / "report.jsonl", "w", encoding="utf-8") as stream, progress_bar() as progress:
            task = progress.add_task("frames", total=config.max_frames)
            for frame in frames_from(source):
                if config.max_frames is not None and summary["frames"] >= config.max_frames:
                    break
                record = _inspect(frame, detector, engine, config, summary, out)
                stream.write(json.dumps(record, ensure_ascii=False) + "\n")
                stream.flush()
                progress.update(task, advance=1, status=f"{summary['defects']} defects")
        summary["status"] = "complete"
    except BaseException as exc:
        summary["status"] = f"incomplete: {type(exc).__name__}: {exc}"
        raise
    finally:
        _finish(summary, out, time.perf_counter() - started)
    return summary


def _inspect(frame: Frame, detector: Detector, engine: Engine | None, config: InspectionConfig,
             summary: dict[str, Any], out: Path) -> dict[str, Any]:
    """One frame: detect, analyse each crop, annotate; returns its report line."""
    summary["frames"] += 1
    if frame.pixels is None:
        summary["unreadable_frames"] += 1
        logger.warning("frame %s skipped: %s", frame.name, frame.error)
        return {"frame": frame.index, "source": frame.name, "skipped": frame.error}
    t = time.perf_counter()
    detections = detector.detect(frame.pixels)
    summary["detector_seconds"] += time.perf_counter() - t
    analyses: list[str | None] = [None] * len(detections)
    if engine is not None and detections:
        t = time.perf_counter()
        crops = [Image.fromarray(np.ascontiguousarray(crop_around(frame.pixels, d.box, config.crop_size)))
                 for d in detections]
        results = engine.generate([Request.ask(config.question, crop, max_new_tokens=config.max_new_tokens)
                                   for crop in crops])
        analyses = [r.text.strip() for r in results]
        summary["analysis_seconds"] += time.perf_counter() - t
    if detections:
        summary["frames_with_defects"] += 1
        summary["defects"] += len(detections)
        for d in detections:
            summary["labels"][d.label] = summary["labels"].get(d.label, 0) + 1
        if len(summary["annotated"]) < config.annotated_frames:
            summary["annotated"].append(_annotate(frame, detections, analyses, out))
    return {"frame": frame.index, "source": frame.name, "detections": [
        {"box": list(d.box), "score": d.score, "label": d.label, "analysis": a} for d, a in zip(detections, analyses)]}


def _annotate(frame: Frame, detections: list[Detection], analyses: list[str | None], out: Path) -> dict[str, Any]:
    image = cv2.cvtColor(frame.pixels, cv2.COLOR_RGB2BGR)
    scale = max(1, 384 // max(image.shape[:2]))  # small frames are enlarged so the labels stay readable
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    for number, d in enumerate(detections, 1):
        x0, y0, x1, y1 = (v * scale for v in d.box)
        cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), (0, 0, 255), 2)
        cv2.putText(image, str(number), (x0, max(12, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 255), 1)
    path = out / "frames" / f"frame-{frame.index:06d}.jpg"
    cv2.imwrite(str(path), image)
    lines = [f"{n}. {d.label} {d.score:g}" + (f": {a}" if a else "") for n, (d, a) in
             enumerate(zip(detections, analyses), 1)]
    return {"image": str(path.relative_to(out)), "frame": frame.index, "source": frame.name,
            "caption": "\n".join(lines)}


def _finish(summary: dict[str, Any], out: Path, seconds: float) -> None:
    frames = summary["frames"]
    summary["seconds"] = round(seconds, 3)
    summary["frames_per_second"] = round(frames / seconds, 2) if seconds > 0 else 0.0
    summary["detector_frames_per_second"] = (round(frames / summary["detector_seconds"], 1)
                                             if summary["detector_seconds"] else None)
    summary["detector_seconds"] = round(summary["detector_seconds"], 3)
    summary["analysis_seconds"] = round(summary["analysis_seconds"], 3)
    write_json(out / "summary.json", summary)
    labels = ", ".join(f"{k} {v}" for k, v in summary["labels"].items()) or "none"
    figures = [Figure(a["image"], a["caption"], f"frame {a['frame']} ({a['source']})") for a in summary["annotated"]]
    blocks: list = [
        ("h1", "vlstack inspection report"),
        ("p", f"Status: {summary['status']}. Source: {summary['source']}. {frames} frames "
              f"({summary['unreadable_frames']} unreadable), {summary['frames_with_defects']} with defects, "
              f"{summary['defects']} defects ({labels})."),
        ("p", f"{summary['frames_per_second']} frames/s end to end over {summary['seconds']} s; detector alone "
              f"{summary['detector_frames_per_second']} frames/s; model analysis {summary['analysis_seconds']} s. "
              f"Model: {summary['model'] or 'none (detector only)'}."),
        ("p", f"Prompt: {summary['prompt'] or '-'}. Every frame's detections: report.jsonl."),
        ("h2", "Annotated frames"),
        Gallery(figures),
    ]
    write_page(out / "report.html", "vlstack inspection report", blocks)


def _iterable_frames(source: Iterable[np.ndarray | Image.Image]) -> Iterator[Frame]:
    for index, item in enumerate(source):
        pixels = np.asarray(item.convert("RGB")) if isinstance(item, Image.Image) else item
        if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 3
                and pixels.shape[2] == 3):
            raise InputError(f"frame {index} of the iterable is not an RGB uint8 array [H, W, 3] or a PIL image")
        yield Frame(index, f"frame-{index:06d}", pixels)


def _folder_frames(files: list[Path]) -> Iterator[Frame]:
    for index, path in enumerate(files):
        pixels = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if pixels is None:
            yield Frame(index, path.name, None, "OpenCV cannot decode the image")
        else:
            yield Frame(index, path.name, cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB))


def _video_frames(capture: cv2.VideoCapture, path: Path) -> Iterator[Frame]:
    try:
        index = 0
        while True:
            ok, pixels = capture.read()
            if not ok:
                break
            yield Frame(index, f"{path.name}#{index}", cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB))
            index += 1
        if index == 0:
            raise InputError(f"video {path} opened but no frame could be decoded; the file may be truncated")
    finally:
        capture.release()


def crop_around(pixels: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """A square crop of at least `size` pixels centred on `box` (grown to hold it), clipped to the image."""
    x0, y0, x1, y1 = box
    side = max(size, x1 - x0 + 8, y1 - y0 + 8)
    height, width = pixels.shape[:2]
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    left = min(max(0, cx - side // 2), max(0, width - side))
    top = min(max(0, cy - side // 2), max(0, height - side))
    return pixels[top : top + side, left : left + side]
