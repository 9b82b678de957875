"""Synthetic point clouds: points on the surface of a sphere, cube, cylinder, cone or torus.

Each cloud is a pure function of (seed, split, index): the shape cycles with the index
(so every class is equally common and chance is exactly 1/5), its proportions, size,
rotation (uniform over SO(3)) and sensor noise are drawn from a generator seeded by
the three. Points are spread uniformly over the surface area. Captions and questions
(shape, yes/no, flat faces, a hole) say only what the geometry makes true, so answers
are checkable. Placing a cloud into a prompt (the `<point>` placeholder) is left to the
model side; here a question is plain text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from vlstack.errors import DataError
from vlstack.synthetic.scenes import split_seed

POINT_SHAPES = ("sphere", "cube", "cylinder", "cone", "torus")
SHAPES_ZH = {"sphere": "球体", "cube": "立方体", "cylinder": "圆柱体", "cone": "圆锥体", "torus": "圆环体"}
FLAT_FACES = {"sphere": 0, "cube": 6, "cylinder": 2, "cone": 1, "torus": 0}

Language = Literal["en", "zh"]


@dataclass
class PointCloudSample:
    id: str
    shape: str
    points: np.ndarray = field(repr=False)
    """float32 [N, 3] surface points (rotated, scaled, shifted, noisy)."""
    caption: str
    qa: list[tuple[str, str]]
    """(question, answer) pairs that the shape answers exactly."""
    meta: dict[str, Any] = field(default_factory=dict)
    """seed, split, index and the drawn proportions, scale, rotation and noise."""

    @property
    def label(self) -> int:
        return POINT_SHAPES.index(self.shape)


def point_cloud(seed: int, index: int, split: str = "train", num_points: int = 1024, noise: float = 0.01,
                rotate: bool = True, lang: Language = "en") -> PointCloudSample:
    """Cloud `index` of the (seed, split) corpus; `noise` is the Gaussian jitter relative to the size."""
    if num_points < 1:
        raise DataError(f"num_points must be at least 1; got {num_points}")
    if noise < 0:
        raise DataError(f"noise must be >= 0; got {noise}")
    shape = POINT_SHAPES[index % len(POINT_SHAPES)]
    rng = np.random.default_rng([split_seed(seed, split), index])
    surface, params = _SURFACES[shape](rng, num_points)  # [N, 3] around the origin, radius ~1
    rotation = Rotation.random(random_state=rng).as_matrix() if rotate else np.eye(3)  # uniform on SO(3)
    scale = float(rng.uniform(0.5, 1.5))
    shift = rng.normal(0.0, 0.2, size=3)
    points = surface @ rotation.T * scale + shift + rng.normal(0.0, noise * scale, size=surface.shape)
    meta = {"source": "synthetic", "seed": seed, "split": split, "index": index, "lang": lang, **params,
            "scale": scale, "shift": shift.tolist(), "rotation": rotation.tolist(), "noise": noise}
    return PointCloudSample(f"points-{seed}-{split}-{index:06d}", shape, points.astype(np.float32),
                            caption_for(shape, lang), questions_for(shape, rng, lang), meta)


def point_clouds(n: int, seed: int, split: str = "train", **kwargs) -> list[PointCloudSample]:
    return [point_cloud(seed, i, split, **kwargs) for i in range(n)]


def point_cloud_tensors(samples: list[PointCloudSample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clouds of equal size -> points [B, N, 3] and shape labels [B]."""
    sizes = {len(s.points) for s in samples}
    if len(sizes) != 1:
        raise DataError(f"clouds must have the same number of points to stack; got sizes {sorted(sizes)}")
    points = torch.from_numpy(np.stack([s.points for s in samples]))
    return points, torch.tensor([s.label for s in samples])


def caption_for(shape: str, lang: Language = "en") -> str:
    return f"一个{SHAPES_ZH[shape]}的三维点云" if lang == "zh" else f"a 3D point cloud of a {shape}"


def questions_for(shape: str, rng: np.random.Generator, lang: Language = "en") -> list[tuple[str, str]]:
    """What shape, is it a <shape> (yes half the time), how many flat faces, does it have a hole."""
    asked = shape if rng.random() < 0.5 else str(rng.choice([s for s in POINT_SHAPES if s != shape]))
    faces, hole = FLAT_FACES[shape], shape == "torus"
    if lang == "zh":
        yes_no = {True: "是", False: "否"}
        return [("这个点云是什么形状？", SHAPES_ZH[shape]),
                (f"这是{SHAPES_ZH[asked]}吗？", yes_no[asked == shape]),
                ("它有几个平面？", str(faces)),
                ("它中间有孔吗？", yes_no[hole])]
    yes_no = {True: "yes", False: "no"}
    return [("What shape is this point cloud?", shape),
            (f"Is this a {asked}?", yes_no[asked == shape]),
            ("How many flat faces does it have?", str(faces)),
            ("Does it have a hole through it?", yes_no[hole])]


# --- surfaces: uniform by area, centred on the origin ---------------------------------------------------


def _sphere(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict]:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True), {}


def _cube(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict]:
    half = 1 / np.sqrt(3)  # corners on the unit sphere
    points = rng.uniform(-half, half, size=(n, 3))
    axis = rng.integers(0, 3, size=n)
    points[np.arange(n), axis] = rng.choice([-half, half], size=n)  # push each point onto a face
    return points, {}


def _cylinder(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict]:
    radius, height = rng.uniform(0.4, 0.8), rng.uniform(0.8, 1.6)
    side, cap = 2 * np.pi * radius * height, np.pi * radius**2
    on_side = rng.random(n) < side / (side + 2 * cap)
    angle = rng.uniform(0, 2 * np.pi, size=n)
    r = np.where(on_side, radius, radius * np.sqrt(rng.random(n)))
    z = np.where(on_side, rng.uniform(-height / 2, height / 2, size=n), rng.choice([-height / 2, height / 2], n))
    return np.stack([r * np.cos(angle), r * np.sin(angle), z], axis=1), {"radius": radius, "height": height}


def _cone(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict]:
    radius, height = rng.uniform(0.5, 0.9), rng.uniform(0.8, 1.6)
    lateral, base = np.pi * radius * np.hypot(radius, height), np.pi * radius**2
    on_side = rng.random(n) < lateral / (lateral + base)
    t = np.sqrt(rng.random(n))  # fraction of the way from apex (side) or centre (base); sqrt: uniform area
    angle = rng.uniform(0, 2 * np.pi, size=n)
    r = radius * t
    z = np.where(on_side, height / 2 - height * t, -height / 2)
    return np.stack([r * np.cos(angle), r * np.sin(angle), z], axis=1), {"radius": radius, "height": height}


def _torus(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict]:
    tube = rng.uniform(0.2, 0.4)
    ring = 1.0 - tube
    tube_angles = np.empty(0)
    while len(tube_angles) < n:  # area element ~ (ring + tube cos a): rejection sampling
        a = rng.uniform(0, 2 * np.pi, size=2 * n)
        keep = rng.random(2 * n) < (ring + tube * np.cos(a)) / (ring + tube)
        tube_angles = np.concatenate([tube_angles, a[keep]])
    a, b = tube_angles[:n], rng.uniform(0, 2 * np.pi, size=n)
    r = ring + tube * np.cos(a)
    return np.stack([r * np.cos(b), r * np.sin(b), tube * np.sin(a)], axis=1), {"ring": ring, "tube": tube}


_SURFACES = {"sphere": _sphere, "cube": _cube, "cylinder": _cylinder, "cone": _cone, "torus": _torus}
