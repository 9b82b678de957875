"""Defect detectors for the inspection pipeline: one interface, a classical detector, a YOLO adapter.

A detector maps an RGB frame (uint8 [H, W, 3]) to boxes. The classical detector needs
no training: it subtracts a background (a reference photograph of a good part, or,
without one, a median-filtered copy of the frame itself), measures the difference in
robust noise units (median absolute deviation), thresholds it, closes small gaps so a
crack stays one object, and boxes the contours (OpenCV). On a directional texture
(brushed or rolled metal, found from the structure tensor) the self-background is a
median along the texture's direction, which keeps the streaks and removes the defects
that cross them; a square median would leave the streaks in the difference as noise. `YoloDetector` runs an ultralytics
weights file when that optional package is installed.

`match_boxes` pairs boxes with ground truth (greedy one-to-one at an IoU threshold), for
the precision and recall the demo and the tests quote.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
from scipy.ndimage import median_filter
from torchvision.ops import box_iou

from vlstack.errors import ConfigError, InputError

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Detection:
    box: Box
    """(x0, y0, x1, y1) in frame pixels, x1 and y1 exclusive."""
    score: float
    """Detector confidence; for the classical detector, the peak difference in noise units."""
    label: str = "defect"


class Detector(Protocol):
    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Boxes of the defects in an RGB frame, uint8 [H, W, 3]."""
        ...


@dataclass
class ClassicalConfig:
    """Settings of the difference-and-contours detector."""

    threshold: float = 5.5
    """A pixel is anomalous when it differs from the background by this many robust noise units."""
    smoothing: float = 0.7
    """Gaussian sigma (pixels) applied to the difference before thresholding; it averages out sensor noise."""
    background_kernel: int = 25
    """Median-filter size of the self-background used without a reference image (odd)."""
    directional_above: float = 0.5
    """Texture anisotropy (0: none, 1: pure streaks) above which the self-background is a median along the
    texture's direction rather than over a square."""
    close_kernel: int = 7
    """Morphological closing joins fragments of one defect closer than this (pixels)."""
    min_area: int = 10
    """Smaller blobs (in mask pixels) are noise."""
    max_detections: int = 32

    def __post_init__(self) -> None:
        if self.background_kernel < 3 or self.background_kernel % 2 == 0 or self.background_kernel > 255:
            raise ConfigError(f"background_kernel must be an odd number in [3, 255], got {self.background_kernel}")
        if self.threshold <= 0 or self.min_area < 1 or self.close_kernel < 1:
            raise ConfigError("threshold must be > 0, min_area and close_kernel >= 1")


class ClassicalDetector:
    """Difference from a reference image (when given) or from the frame's local background."""

    def __init__(self, config: ClassicalConfig | None = None, reference: np.ndarray | None = None):
        self.config = config or ClassicalConfig()
        self.reference = None if reference is None else _gray(reference)

    def detect(self, frame: np.ndarray) -> list[Detection]:
        cfg = self.config
        gray = _gray(frame)
        if self.reference is not None:
            if self.reference.shape != gray.shape:
                raise InputError(f"the reference image is {self.reference.shape[1]}x{self.reference.shape[0]} but "
                                 f"the frame is {gray.shape[1]}x{gray.shape[0]}; give a reference of the frame's size")
            background = self.reference
        else:
            background = local_background(gray, cfg.background_kernel, cfg.directional_above)
        difference = cv2.GaussianBlur(gray - background, (0, 0), cfg.smoothing)  # [H, W]
        centre = float(np.median(difference))
        noise = 1.4826 * float(np.median(np.abs(difference - centre))) + 1e-3  # robust sigma
        z = np.abs(difference - centre) / noise
        mask = (z > cfg.threshold).astype(np.uint8)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (cfg.close_kernel, cfg.close_kernel))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        detections = []
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            if int(mask[y : y + h, x : x + w].sum()) < cfg.min_area:
                continue
            detections.append(Detection((x, y, x + w, y + h), round(float(z[y : y + h, x : x + w].max()), 2)))
        return sorted(detections, key=lambda d: -d.score)[: cfg.max_detections]


class YoloDetector:
    """An ultralytics YOLO weights file (`pip install 'vlstack[yolo]'`, i.e. ultralytics)."""

    def __init__(self, weights: str | Path, confidence: float = 0.25):
        try:
            from ultralytics import YOLO
        except ImportError as exc:
            raise ConfigError("the YOLO detector needs ultralytics: pip install 'vlstack[yolo]' "
                              "(or pip install ultralytics); the classical detector needs nothing") from exc
        if not Path(weights).is_file():
            raise InputError(f"YOLO weights file {weights} does not exist")
        self.model = YOLO(str(weights))
        self.confidence = confidence

    def detect(self, frame: np.ndarray) -> list[Detection]:
        result = self.model.predict(np.ascontiguousarray(frame[..., ::-1]), conf=self.confidence, verbose=False)[0]
        boxes = result.boxes
        return [Detection(tuple(int(round(v)) for v in xyxy), round(float(score), 3), result.names[int(cls)])
                for xyxy, score, cls in zip(boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist())]


def match_boxes(predicted: Sequence[Box], truth: Sequence[Box], iou: float = 0.3) -> list[tuple[int, int]]:
    """(prediction index, truth index) pairs: each box matches at most one other, greedily by highest IoU,
    when their IoU is at least `iou`."""
    if not predicted or not truth:
        return []
    overlaps = box_iou(torch.tensor(predicted, dtype=torch.float32), torch.tensor(truth, dtype=torch.float32))
    pairs = []
    while overlaps.max() >= iou:
        row, col = divmod(int(overlaps.argmax()), overlaps.shape[1])
        overlaps[row, :] = -1
        overlaps[:, col] = -1
        pairs.append((row, col))
    return pairs


def detection_counts(predicted: Sequence[Box], truth: Sequence[Box], iou: float = 0.3) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of one image under `match_boxes`."""
    matched = len(match_boxes(predicted, truth, iou))
    return matched, len(predicted) - matched, len(truth) - matched


def precision_recall(counts: Sequence[tuple[int, int, int]]) -> dict[str, float]:
    """Micro-averaged precision and recall over per-image `detection_counts`."""
    tp, fp, fn = (sum(c[i] for c in counts) for i in range(3))
    return {"precision": tp / (tp + fp) if tp + fp else 1.0, "recall": tp / (tp + fn) if tp + fn else 1.0,
            "true_positives": tp, "false_positives": fp, "false_negatives": fn}


def local_background(gray: np.ndarray, kernel: int, directional_above: float = 0.5) -> np.ndarray:
    """The frame's background without small defects: a median over a square, or along the texture's
    direction when the structure tensor says the texture has one. float32 [H, W]."""
    gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)
    jxx, jyy, jxy = float((gx * gx).mean()), float((gy * gy).mean()), float((gx * gy).mean())
    anisotropy = math.hypot(jxx - jyy, 2 * jxy) / max(jxx + jyy, 1e-9)
    if anisotropy <= directional_above:
        return cv2.medianBlur(np.clip(gray, 0, 255).astype(np.uint8), kernel).astype(np.float32)
    along = 0.5 * math.atan2(2 * jxy, jxx - jyy) + math.pi / 2  # perpendicular to the mean gradient
    footprint = np.zeros((kernel, kernel), np.uint8)
    c, dx, dy = kernel // 2, math.cos(along) * (kernel // 2), math.sin(along) * (kernel // 2)
    cv2.line(footprint, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1, 1)
    return median_filter(gray, footprint=footprint.astype(bool), mode="reflect")


def _gray(image: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] or gray [H, W] -> float32 gray [H, W]."""
    if image.ndim == 3:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    return image.astype(np.float32)
