"""The LLaVA recipes from the CLI: a local tower and LM -> stage 1 (projector) -> stage 2 -> export -> transformers."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from vlstack.checkpoint import load_model
from vlstack.cli import main
from vlstack.infer.engine import Engine, Request
from vlstack.synthetic.scenes import caption_sample

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def cli(*argv) -> None:
    assert main([str(a) for a in argv]) == 0, argv


def recipe(name: str, path: Path, **changes) -> Path:
    """configs/<name>.yaml with the run's sizes and data: its stages keep what they freeze and train."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    stage_changes = changes.pop("stage")
    config["stages"][0].update(stage_changes)
    config.update(changes)
    config["train"] = {**config["train"], "precision": "fp32", "warmup_steps": 1, "log_every": 1,
                       "measure_mfu": False, "tensorboard": False}
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_stage_one_and_two_from_local_checkpoints_then_export(tmp_path, tiny_tower, tiny_language_model, kind):
    images, chats, lines = tmp_path / "images", [], ["image,caption"]
    images.mkdir()
    for index in range(24):
        sample = caption_sample(1, index)
        (images / f"{index}.png").write_bytes(sample.images[0].data)
        lines.append(f"{index}.png,\"{sample.text}\"")
        chats.append({"id": f"c{index}", "image": f"{index}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": sample.text}]})
    (tmp_path / "captions.csv").write_text("\n".join(lines) + "\n")
    (images / "chats.json").write_text(json.dumps(chats))
    cli("data", "ingest", "folder", images, tmp_path / "captions", "--captions", tmp_path / "captions.csv")
    cli("data", "ingest", "llava", images / "chats.json", tmp_path / "instruct")

    stage1 = recipe("llava_stage1", tmp_path / "stage1.yaml", out_dir=str(tmp_path / "stage1"), max_length=256,
                    stage={"steps": 3, "batch_size": 4, "datasets": [{"name": "captions",
                                                                        "path": str(tmp_path / "captions")}]})
    cli("finetune", "--config", stage1, "--set", f"model.vision.pretrained_path={tiny_tower(kind)}",
        "--set", f"model.language.pretrained_path={tiny_language_model('qwen3')}")
    initial = load_model(tmp_path / "stage1" / "initial")
    projector = load_model(tmp_path / "stage1" / "01-projector" / "model")
    for part, trains in (("vision", False), ("language_model", False), ("fusion", False), ("projector", True)):
        before, after = getattr(initial, part).state_dict(), getattr(projector, part).state_dict()
        changed = any(not torch.equal(before[k], after[k]) for k in before)
        assert changed == trains, part

    stage2 = recipe("llava_stage2", tmp_path / "stage2.yaml", out_dir=str(tmp_path / "stage2"), max_length=256,
                    base=str(tmp_path / "stage1" / "01-projector" / "model"),
                    stage={"steps": 3, "batch_size": 4, "lora": {"r": 4, "alpha": 8},
                           "datasets": [{"name": "instruct", "path": str(tmp_path / "instruct")}]})
    cli("finetune", "--config", stage2)
    tuned = tmp_path / "stage2" / "01-instruct" / "model"
    q_proj = "model.layers.0.self_attn.q_proj.weight"  # LoRA trained it; merged into the weights at the end
    assert not torch.equal(load_model(tuned).language_model.state_dict()[q_proj],
                           projector.language_model.state_dict()[q_proj])
    cli("export", "--format", "hf", tuned, tmp_path / "hf")

    processor = AutoProcessor.from_pretrained(tmp_path / "hf", local_files_only=True)
    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    engine = Engine.from_checkpoint(tuned)
    picture = Image.open(io.BytesIO(caption_sample(3, 0).images[0].data))
    prompt = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhat is in the picture?"}], tokenize=False, add_generation_prompt=True)
    inputs = processor(images=picture, text=prompt, return_tensors="pt")
    with torch.no_grad():
        theirs = llava.generate(**inputs, max_new_tokens=10, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    ours = engine.generate([Request.ask("What is in the picture?", picture, max_new_tokens=10)])[0].token_ids
    stops = [i for i, token in enumerate(theirs) if token in engine._stop_ids]  # transformers keeps the stop token
    assert ours == theirs[: stops[0] if stops else None]
