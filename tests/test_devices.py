"""The one `device` setting: what each name means, and a clear error for a GPU this machine lacks."""

import pytest
import torch

from vlstack.devices import resolve_device
from vlstack.errors import ConfigError


def test_auto_is_the_gpu_when_there_is_one_else_the_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name, message", [
    ("tpu", "is not a device"), ("mps", "vlstack runs on auto"), ("not a device", "is not a device"),
])
def test_an_unknown_device_names_the_choices(name, message):
    with pytest.raises(ConfigError, match=message):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a GPU")
def test_a_gpu_asked_for_without_one_is_a_config_error():
    with pytest.raises(ConfigError, match="PyTorch sees no CUDA GPU"):
        resolve_device("cuda:0")

