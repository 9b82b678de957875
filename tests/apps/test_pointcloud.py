import pytest
import torch

from vlstack.demo.apps import pointcloud_demo


@pytest.fixture
def one_thread():
    """Per-point layers on [4096, <=128] tensors gain nothing from a second thread, and on a busy machine
    two threads wait on each other (minutes instead of seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_tiny_encoder_learns_the_five_shapes_held_out(one_thread):
    """Held-out clouds (test split: other rotations, sizes, proportions, noise); chance is 1/5."""
    results = pointcloud_demo()
    assert results["chance"] == 0.2
    assert results["test_accuracy"] >= 0.9, results
    assert min(results["per_class"].values()) >= 0.6, results
