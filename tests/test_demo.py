import json

import pytest

from vlstack.cli import main
from vlstack.models.vlm import QwenImageModel


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_learns(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--set", f"out_dir={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    retrieval = report["stages"]["retrieval"]["after_training"]
    # chance is about 1%; a quick run reaches ~0.5, so 0.2 is a conservative floor
    assert retrieval["r@1"] > 0.2 > 10 * retrieval["chance@1"]
    assert report["stages"]["pretrain_itc"]["final_loss"] < report["stages"]["pretrain_itc"]["first_loss"]
    for name in ("report.md", "loss.png", "train_log.jsonl", "demo_config.yaml"):
        assert (out / name).is_file(), name
    assert "R@1" in (out / "report.md").read_text()
    QwenImageModel.from_pretrained(out / "checkpoint")  # the saved checkpoint loads
    assert "held-out image->text R@1" in capsys.readouterr().out
