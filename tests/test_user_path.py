"""The README's "Train on your own data", from the CLI alone: a user's corpus -> ingest -> clean -> train -> eval.

Small data the test writes: an image folder with captions, a LLaVA JSON with a text-only chat, and
img2dataset tars. Each goes through `vlstack data ingest`, `vlstack data clean` (defaults: no reference
corpus to supply), then `vlstack pretrain` or `vlstack finetune` on the nano preset, then evaluation.
"""

import io
import json
import tarfile
from pathlib import Path

import pytest

from vlstack.cli import main
from vlstack.synthetic.scenes import caption_sample
from vlstack.synthetic.suites import write_suites

NANO = str(Path(__file__).resolve().parents[1] / "configs" / "nano.yaml")


def cli(*argv) -> None:
    assert main([str(a) for a in argv]) == 0, argv


def sets(*overrides: str) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def scene_folder(root: Path, n: int, seed: int) -> tuple[Path, Path]:
    """n captioned scenes as a user has them: image files and a captions CSV."""
    images = root / "images"
    images.mkdir(parents=True)
    lines = ["image,caption"]
    for index in range(n):
        sample = caption_sample(seed, index)
        (images / f"{index:04d}.png").write_bytes(sample.images[0].data)
        lines.append(f"{index:04d}.png,\"{sample.text}\"")
    (root / "captions.csv").write_text("\n".join(lines) + "\n")
    return images, root / "captions.csv"


def pretrained(tmp_path: Path, source_dir: Path) -> Path:
    """Held-out captions ingested and cleaned the same way, then nano pretraining on the cleaned corpus."""
    held_out = scene_folder(tmp_path / "held-out", 32, seed=9)
    cli("data", "ingest", "folder", held_out[0], tmp_path / "held-out-raw", "--captions", held_out[1])
    cli("data", "clean", tmp_path / "held-out-raw", tmp_path / "held-out-clean")
    cli("data", "clean", source_dir, tmp_path / "clean")
    out = tmp_path / "pretrain"
    cli("pretrain", "--config", NANO, *sets(f"data.sources=[{{path: {tmp_path / 'clean'}}}]",
                                           f"data.test={tmp_path / 'held-out-clean'}", "train.steps=4",
                                           f"out_dir={out}"))
    results = json.loads((out / "pretrain.json").read_text())
    assert results["steps"] == 4 and "r@1" in results["after_training"]
    return out / "checkpoint"


@pytest.mark.slow
def test_an_image_folder_pretrains_then_a_llava_file_finetunes_and_evaluates(tmp_path):
    images, captions = scene_folder(tmp_path / "mine", 96, seed=1)
    cli("data", "ingest", "folder", images, tmp_path / "raw", "--captions", captions)
    checkpoint = pretrained(tmp_path, tmp_path / "raw")

    chats = []
    for index in range(24):
        sample = caption_sample(2, index)
        (tmp_path / "mine" / f"chat-{index}.png").write_bytes(sample.images[0].data)
        chats.append({"id": f"c{index}", "image": f"chat-{index}.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the picture."}, {"from": "gpt", "value": sample.text}]})
    chats.append({"id": "text", "conversations": [{"from": "human", "value": "Say hello."},
                                                   {"from": "gpt", "value": "Hello."}]})
    (tmp_path / "mine" / "llava.json").write_text(json.dumps(chats))
    cli("data", "ingest", "llava", tmp_path / "mine" / "llava.json", tmp_path / "chats-raw")
    cli("data", "clean", tmp_path / "chats-raw", tmp_path / "chats-clean")
    recipe = {"base": str(checkpoint), "max_length": 128, "out_dir": str(tmp_path / "finetune"),
              "train": {"warmup_steps": 1, "log_every": 1, "measure_mfu": False, "tensorboard": False},
              "stages": [{"name": "mine", "steps": 3, "batch_size": 8, "lr": 1e-3,
                          "datasets": [{"name": "mine", "path": str(tmp_path / "chats-clean")}]}]}
    (tmp_path / "finetune.json").write_text(json.dumps(recipe))  # JSON is YAML
    cli("finetune", "--config", tmp_path / "finetune.json")
    model = tmp_path / "finetune" / "01-mine" / "model"
    stage = json.loads((tmp_path / "finetune" / "01-mine" / "stage.json").read_text())
    assert stage["samples"] == 25 and stage["steps"] == 3  # the text-only chat trains too

    write_suites(tmp_path / "suites", 4)
    cli("eval", "--model", model, "--data-root", tmp_path / "suites", "--benchmarks", "vqav2",
        "--out", tmp_path / "eval")
    assert "vqav2" in json.loads((tmp_path / "eval" / "results.json").read_text())["benchmarks"]


@pytest.mark.slow
def test_img2dataset_output_pretrains(tmp_path):
    download = tmp_path / "download"
    download.mkdir()
    with tarfile.open(download / "00000.tar", "w") as tar:
        for index in range(64):
            sample = caption_sample(3, index)
            for suffix, data in (("png", sample.images[0].data), ("txt", sample.text.encode()),
                                 ("json", json.dumps({"key": f"{index:09d}", "status": "success"}).encode())):
                info = tarfile.TarInfo(f"{index:09d}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    cli("data", "ingest", "img2dataset", download, tmp_path / "raw")
    pretrained(tmp_path, tmp_path / "raw")
