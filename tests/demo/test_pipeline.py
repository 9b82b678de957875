import json

import pytest

from vlstack.checkpoint import load_model
from vlstack.cli import main


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_learns(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--set", f"out_dir={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    pretrain = report["stages"]["pretrain"]
    after = pretrain["after_training"]
    # chance is about 1%; a quick run reaches ~0.2, so 0.1 is a conservative floor
    assert after["r@1"] > 0.1 > 8 * after["chance@1"]
    assert pretrain["final_loss"] < pretrain["first_loss"]
    assert set(pretrain["final_losses"]) == {"itc", "itm", "mlm", "vtm"}
    for name in ("report.md", "loss.png", "demo_config.yaml", "pretrain/train_log.jsonl"):
        assert (out / name).is_file(), name
    assert "R@1" in (out / "report.md").read_text()
    cleaning = report["stages"]["clean"]
    assert cleaning["unaccounted"] == 0 and cleaning["kept"] + cleaning["rejected"] == cleaning["samples"]
    assert min(cleaning["recall"].values()) >= 0.9 and cleaning["clean_wrongly_dropped_rate"] <= 0.1
    assert (out / "clean" / "cleaned" / "report.md").is_file()
    assert set(report["stages"]["eval"]["benchmarks"]) >= {"vqav2", "gqa", "docvqa", "chartqa", "vqarad", "aokvqa"}
    assert (out / "eval" / "results.json").is_file()
    stages = report["stages"]
    assert set(stages["finetune"]["stages"]) == {"general", "domain", "safety"}
    assert stages["finetune"]["stages"]["general"]["final_loss"] < stages["finetune"]["stages"]["general"]["first_loss"]
    assert 0.0 <= stages["align"]["held_out_reward_accuracy"] <= 1.0
    assert stages["hallucination"]["auroc"] > 0.5 and set(stages["hallucination"]["pope"]) == {
        "random", "popular", "adversarial"}
    assert stages["deployment"]["figures"]["onnx"]["parity_max_abs_diff"] <= 1e-4
    apps = stages["apps"]
    assert apps["medical"]["identifier_leaks"] == [] and apps["inspection"]["recall"] >= 0.9
    assert apps["pointcloud"]["test_accuracy"] > 0.6 and apps["embodied_scripted"]["success"]
    load_model(pretrain["checkpoint"])  # the saved checkpoint loads
    load_model(stages["align"]["checkpoint"])
    assert "held-out image->text R@1" in capsys.readouterr().out
