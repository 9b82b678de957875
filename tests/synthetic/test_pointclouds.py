import json

import numpy as np
import pytest

from vlstack.errors import DataError
from vlstack.synthetic.pointclouds import POINT_SHAPES, point_cloud, point_cloud_tensors, point_clouds


def _surface(sample) -> np.ndarray:
    """The un-shifted, un-scaled surface points of a cloud drawn with rotate=False."""
    return (sample.points.astype(np.float64) - sample.meta["shift"]) / sample.meta["scale"]


def test_clouds_are_deterministic_and_splits_are_disjoint():
    a, b = point_cloud(0, 3), point_cloud(0, 3)
    assert np.array_equal(a.points, b.points) and a.qa == b.qa and a.meta == b.meta
    assert not np.allclose(point_cloud(0, 3, split="test").points, a.points)
    assert not np.allclose(point_cloud(1, 3).points, a.points)
    assert a.points.shape == (1024, 3) and a.points.dtype == np.float32
    json.dumps(a.meta)  # JSON-able provenance


def test_every_shape_is_equally_common_and_labels_match():
    samples = point_clouds(20, seed=0, num_points=32)
    assert [s.shape for s in samples] == list(POINT_SHAPES) * 4
    points, labels = point_cloud_tensors(samples)
    assert points.shape == (20, 32, 3) and labels.tolist() == [i % 5 for i in range(20)]


@pytest.mark.parametrize("shape", POINT_SHAPES)
def test_points_lie_on_the_surface_of_their_shape(shape):
    sample = point_cloud(0, POINT_SHAPES.index(shape), num_points=2000, noise=0.0, rotate=False)
    x, y, z = _surface(sample).T
    m = sample.meta
    if shape == "sphere":
        assert np.allclose(np.sqrt(x**2 + y**2 + z**2), 1.0)
    elif shape == "cube":
        assert np.allclose(np.abs(_surface(sample)).max(axis=1), 1 / np.sqrt(3))
    elif shape == "cylinder":
        side, cap = np.isclose(np.hypot(x, y), m["radius"]), np.isclose(np.abs(z), m["height"] / 2)
        assert np.all(side | cap)
        # uniform by area: the caps hold their share of the points
        cap_share = 2 * np.pi * m["radius"] ** 2 / (2 * np.pi * m["radius"] * (m["height"] + m["radius"]))
        assert abs(cap.mean() - cap_share) < 0.04
    elif shape == "cone":
        on_base = np.isclose(z, -m["height"] / 2)
        on_side = np.isclose(np.hypot(x, y), m["radius"] * (m["height"] / 2 - z) / m["height"])
        assert np.all(on_base | on_side)
    else:
        tube = np.hypot(np.hypot(x, y) - m["ring"], z)
        assert np.allclose(tube, m["tube"])


def test_noise_and_rotation_are_applied():
    clean = point_cloud(0, 0, num_points=500, noise=0.0, rotate=False)
    noisy = point_cloud(0, 0, num_points=500, noise=0.05, rotate=False)
    radii = np.linalg.norm(_surface(noisy), axis=1)
    assert 0.02 < radii.std() < 0.08 and np.allclose(np.linalg.norm(_surface(clean), axis=1), 1.0)
    rotation = np.array(point_cloud(0, 2).meta["rotation"])
    assert np.allclose(rotation @ rotation.T, np.eye(3)) and np.isclose(np.linalg.det(rotation), 1.0)
    assert not np.allclose(rotation, np.eye(3))


def test_questions_are_true_for_the_shape():
    for sample in point_clouds(30, seed=2, num_points=8):
        answers = dict(sample.qa)
        assert answers["What shape is this point cloud?"] == sample.shape
        asked = next(q for q in answers if q.startswith("Is this a "))
        assert answers[asked] == ("yes" if asked == f"Is this a {sample.shape}?" else "no")
        assert answers["How many flat faces does it have?"] == {"sphere": "0", "cube": "6", "cylinder": "2",
                                                                 "cone": "1", "torus": "0"}[sample.shape]
        assert answers["Does it have a hole through it?"] == ("yes" if sample.shape == "torus" else "no")
        assert sample.caption == f"a 3D point cloud of a {sample.shape}"
    # both answers of the yes/no question occur
    assert {dict(s.qa)[s.qa[1][0]] for s in point_clouds(30, seed=2, num_points=8)} == {"yes", "no"}
    zh = point_cloud(0, 4, num_points=8, lang="zh")
    assert zh.caption == "一个圆环体的三维点云" and zh.qa[0] == ("这个点云是什么形状？", "圆环体")


def test_bad_arguments_are_data_errors():
    with pytest.raises(DataError, match="unknown split 'dev'"):
        point_cloud(0, 0, split="dev")
    with pytest.raises(DataError, match="num_points"):
        point_cloud(0, 0, num_points=0)
    with pytest.raises(DataError, match="noise"):
        point_cloud(0, 0, noise=-1)
    with pytest.raises(DataError, match="same number of points"):
        point_cloud_tensors([point_cloud(0, 0, num_points=8), point_cloud(0, 1, num_points=9)])
