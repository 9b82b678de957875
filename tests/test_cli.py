import json
import subprocess
import sys

import pytest

from vlstack.cli import main
from vlstack.models.config import ARTICLE_TABLE


@pytest.mark.parametrize("preset", list(ARTICLE_TABLE))
def test_info_json_is_within_two_percent_of_the_seed(preset, capsys):
    assert main(["info", "--preset", preset, "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    for key in ("vision", "language", "fusion", "total"):
        assert isinstance(counts[key], int)
        assert abs(counts[key] / ARTICLE_TABLE[preset][key] - 1) <= 0.02


def test_info_table_and_overrides(capsys):
    assert main(["info", "--preset", "nano", "--set", "vision.layers=4"]) == 0
    assert "vision" in capsys.readouterr().out


@pytest.mark.parametrize("argv, fragment", [
    (["info", "--preset", "giant"], "unknown preset 'giant'; choose one of: nano"),
    (["info", "--preset", "nano", "--set", "vision.layerz=3"], "valid keys: activation, crop, final_norm, global_every"),
    (["demo", "--set", "pretrain.train.steps=many"], "'pretrain.train.steps' must be int"),
])
def test_bad_input_is_a_one_line_error_with_exit_code_2(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and "Traceback" not in err


def test_console_script_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "vlstack.cli", "--help"], capture_output=True, text=True, check=True)
    assert "info" in out.stdout and "demo" in out.stdout and "examples:" in out.stdout


@pytest.mark.parametrize("argv", [["-m", "vlstack.cli", "info", "--preset", "nano"],
                                  ["-c", "import vlstack.train.pretrain"]], ids=["command", "worker"])
def test_a_command_or_worker_starts_without_third_party_noise(argv):
    """Loading a model imports transformers, which imports torchao; torch then warns about torchao's enums. A
    worker process imports the library without the CLI."""
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=True)
    assert "_pytree" not in done.stderr, done.stderr
