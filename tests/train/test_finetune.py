"""Progressive fine-tuning on the nano preset: recipe errors, freezing, LoRA merging, stage resume."""

import json
import re
from pathlib import Path

import pytest
import torch

from vlstack.checkpoint import load_model
from vlstack.cli import main
from vlstack.config import load_config, save_yaml
from vlstack.data.augment import AugmentConfig
from vlstack.data.collate import CollateConfig, SampleCollator
from vlstack.data.conversations import encode_conversations
from vlstack.errors import ConfigError, DataError
from vlstack.models.config import ModelConfig, VisionConfig
from vlstack.models.vlm import QwenImageModel
from vlstack.synthetic.instructions import instruction_samples, write_instructions
from vlstack.train import finetune
from vlstack.train.finetune import (
    DatasetSpec,
    FinetuneConfig,
    FinetuneEvalConfig,
    LoraSettings,
    StageConfig,
    add_lora,
    check_config,
    freeze,
    merge_lora,
    run_finetune,
)
from vlstack.train.objectives import sft_objective, supervised_logits
from vlstack.train.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """`datasets(name, n)`: the path of a synthetic instruction dataset (train split) written once."""
    root = tmp_path_factory.mktemp("instructions")

    def path(name: str, n: int, split: str = "train") -> str:
        folder = root / f"{name}-{split}-{n}"
        if not folder.is_dir():
            write_instructions(folder, name, n, split=split)
        return str(folder)

    return path


def nano_run(out_dir, *stages: StageConfig, **train) -> FinetuneConfig:
    """A from-scratch nano run: seconds per stage."""
    return FinetuneConfig(
        base=None, model=ModelConfig.from_preset("nano"), stages=list(stages), max_length=128,
        train=TrainConfig(warmup_steps=1, log_every=1, measure_mfu=False, tensorboard=False, **train),
        eval=FinetuneEvalConfig(datasets=[], every_stage=False), out_dir=str(out_dir))


def stage(paths, name="general", steps=3, **fields) -> StageConfig:
    """A stage on 24 shapes_vqa conversations unless `datasets` says otherwise (`paths`: the fixture)."""
    fields.setdefault("datasets", [DatasetSpec("shapes_vqa", paths("shapes_vqa", 24))])
    return StageConfig(name, steps=steps, batch_size=8, lr=3e-3, **fields)


def weights(directory) -> dict[str, torch.Tensor]:
    return load_model(directory).state_dict()


@pytest.mark.parametrize("change, message", [
    (dict(freeze=["vision", "encoder"]), "freeze: unknown module(s) ['encoder']; valid modules: vision, projector, "
                                         "fusion, language"),
    (dict(lr_scale={"vit": 0.1}), "lr_scale: unknown module(s) ['vit']; valid modules: vision, projector"),
    (dict(lr_scale={"vision": 0.0}), "lr_scale: multipliers must be above 0"),
    (dict(datasets=[]), "has no data: list at least one dataset"),
    (dict(datasets=[DatasetSpec("mine", "missing.json")]), "path 'missing.json' is not a shard directory or a JSON"),
    (dict(datasets=[DatasetSpec("mine", str(ROOT), samples=0)]), "has samples=0; use 1 or more"),
])
def test_bad_recipes_fail_before_any_work(tmp_path, change, message, datasets):
    config = nano_run(tmp_path / "run", stage(datasets, "general"), stage(datasets, "domain", **change))
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_finetune(config)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("recipe", ["article plan", "configs/finetune.yaml"])
def test_shipped_recipes_are_valid_once_their_data_exists(recipe, datasets):
    config = {"article plan": FinetuneConfig,
              "configs/finetune.yaml": lambda: load_config(FinetuneConfig, ROOT / "configs" / "finetune.yaml")}[recipe]()
    assert [s.name for s in config.stages] == ["general", "domain", "safety"]
    for spec in [*(spec for s in config.stages for spec in s.datasets), *config.eval.datasets]:
        spec.path = datasets("shapes_vqa", 8)
    for s in config.stages:
        s.datasets = s.datasets or [DatasetSpec("shapes_vqa", datasets("shapes_vqa", 8))]
    check_config(config)


def test_a_malformed_conversation_file_fails_before_training(tmp_path, datasets):
    (tmp_path / "a.png").write_bytes(instruction_samples("shapes_vqa", 1)[0].images[0].data)
    path = tmp_path / "chat.json"
    path.write_text(json.dumps([{"id": "x", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nColor?"}, {"from": "gpt", "value": "red"},
        {"from": "gpt", "value": "Really red."}]}]))
    config = nano_run(tmp_path / "run", stage(datasets, "general"),
                      stage(datasets, "mine", datasets=[DatasetSpec("mine", str(path))]))
    with pytest.raises(DataError, match="x: turn 2 is 'gpt' where 'human' was expected"):
        run_finetune(config)
    assert not (tmp_path / "run").exists()


def test_frozen_modules_are_bit_identical_and_not_in_the_optimizer(tmp_path, nano_model, tokenizer, datasets):
    freeze(nano_model, ["vision", "projector"])
    samples = instruction_samples("shapes_vqa", 8)
    collator = SampleCollator(tokenizer, CollateConfig(nano_model.num_image_tokens(), 128, VisionConfig(image_size=32)))
    data, _ = encode_conversations(samples, collator)
    trainer = Trainer(nano_model, sft_objective, TrainConfig(steps=1, batch_size=8, measure_mfu=False), data)
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    frozen = [p for module in ("vision", "projector") for name in QwenImageModel.PARTS[module]
              for p in getattr(nano_model, name).parameters()]
    assert not in_optimizer & {id(p) for p in frozen}
    assert {id(p) for p in nano_model.language_model.parameters()} <= in_optimizer

    config = nano_run(tmp_path / "run", stage(datasets, "domain", freeze=["vision", "projector"]))
    result = run_finetune(config)["stages"]["domain"]
    before, after = weights(tmp_path / "run" / "initial"), weights(result["checkpoint"])
    for name in before:
        unchanged = torch.equal(before[name], after[name])
        if name.startswith(("vision.", "projector.", "patch_position.")):
            assert unchanged, f"{name} changed although frozen"
        elif name.startswith("language_model.model.layers.0.self_attn"):
            assert not unchanged, f"{name} did not train"
    total = sum(t.numel() for t in load_model(result["checkpoint"]).parameters())
    assert result["trainable_parameters"] == total - sum(p.numel() for p in frozen)


def test_a_stage_lr_scale_reaches_the_optimizer(tmp_path, monkeypatch, datasets):
    rates = {}

    class RecordingTrainer(Trainer):
        def __init__(self, model, *args, **kwargs):
            super().__init__(model, *args, **kwargs)
            lr = {id(p): group["lr"] for group in self.optimizer.param_groups for p in group["params"]}
            rates.update({module: {round(lr[id(p)], 9) for p in getattr(model, module).parameters()}
                          for module in ("vision", "patch_position", "language_model")})

    monkeypatch.setattr(finetune, "Trainer", RecordingTrainer)
    run_finetune(nano_run(tmp_path / "run", stage(datasets, "general", steps=1,
                                                  lr_scale={"vision": 0.1, "projector": 2.0})))
    assert rates == {"vision": {3e-4}, "patch_position": {6e-3}, "language_model": {3e-3}}


def test_lora_merged_into_the_base_gives_the_same_outputs(nano_model, tokenizer):
    collator = SampleCollator(tokenizer, CollateConfig(nano_model.num_image_tokens(), 128, VisionConfig(image_size=32)))
    batch, _ = encode_conversations(instruction_samples("shapes_vqa", 4), collator)
    plain_keys = set(nano_model.state_dict())
    add_lora(nano_model, LoraSettings(r=4, alpha=8))
    lora = {n: p for n, p in nano_model.named_parameters() if p.requires_grad and "lora_" in n}
    assert lora and all(not p.requires_grad for n, p in nano_model.language_model.named_parameters()
                        if "lora_" not in n)
    torch.manual_seed(1)
    for name, param in lora.items():
        if "lora_B" in name:  # B starts at zero; give the adapters something to merge
            torch.nn.init.normal_(param, std=0.05)
    with torch.no_grad():
        adapted, _, _ = supervised_logits(nano_model, batch)
        merge_lora(nano_model)
        merged, _, _ = supervised_logits(nano_model, batch)
    assert set(nano_model.state_dict()) == plain_keys  # the plain architecture: loads like any checkpoint
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="lora.target_modules"):
        add_lora(QwenImageModel(nano_model.config), LoraSettings(target_modules=["no_such_layer"]))


def test_an_interrupted_run_resumes_at_its_stage_exactly(tmp_path, monkeypatch, datasets):
    safety = [DatasetSpec("safety", datasets("safety", 16)), DatasetSpec("shapes_vqa", datasets("shapes_vqa", 8))]
    stages = (stage(datasets, "general", steps=2),
              stage(datasets, "tuned", steps=3, lora=LoraSettings(r=4), loss="safety", datasets=safety))
    reference = run_finetune(nano_run(tmp_path / "reference", *stages))

    interrupted = nano_run(tmp_path / "run", *stages, save_every=2)
    original_step = Trainer.train_step

    def crash_in_second_stage(self):
        if self.out_dir.name == "02-tuned" and self.step == 2:
            raise RuntimeError("power cut")
        return original_step(self)

    monkeypatch.setattr(Trainer, "train_step", crash_in_second_stage)
    with pytest.raises(RuntimeError, match="power cut"):
        run_finetune(interrupted)
    monkeypatch.setattr(Trainer, "train_step", original_step)
    with pytest.raises(ConfigError, match="holds an earlier fine-tuning run"):
        run_finetune(interrupted)

    resumed = run_finetune(interrupted, resume=True)
    assert resumed["stages"]["general"]["status"] == "skipped (done)"
    assert resumed["stages"]["tuned"]["resumed_at_step"] == 2 and resumed["stages"]["tuned"]["steps"] == 3
    final, expected = weights(resumed["checkpoint"]), weights(reference["checkpoint"])
    assert all(torch.equal(final[name], expected[name]) for name in expected)

    interrupted.stages[0].lr = 1e-4
    with pytest.raises(ConfigError, match="stage 'general' finished with another config"):
        run_finetune(interrupted, resume=True)


def test_cli_runs_a_recipe(tmp_path, capsys, datasets):
    recipe = tmp_path / "recipe.yaml"
    config = nano_run(tmp_path / "unused", stage(datasets, "general", steps=2))
    config.eval = FinetuneEvalConfig(datasets=[DatasetSpec(name, datasets(name, 4, "test")) for name in
                                               ("shapes_vqa", "safety")], max_new_tokens=4)
    save_yaml(config, recipe)
    assert main(["finetune", "--config", str(recipe), "--set", f"out_dir={tmp_path / 'run'}"]) == 0
    out = capsys.readouterr().out
    assert "shapes_vqa accuracy" in out and str(tmp_path / "run") in out
    assert (tmp_path / "run" / "01-general" / "model" / "model.safetensors").is_file()
    figures = json.loads((tmp_path / "run" / "finetune.json").read_text())["eval"]
    trained = figures["shapes_vqa"]  # the stage trains shapes_vqa: its training samples are answered too
    assert trained["gap"] == pytest.approx(trained["train_accuracy"] - trained["accuracy"])
    assert "train_accuracy" not in figures["safety"]  # a dataset the stage does not train has no train side


def test_a_stage_validates_keeps_its_best_step_and_reports_its_gap(tmp_path, datasets):
    """Validation on a val split named like the stage's dataset: logged during the stage, the best step kept,
    and the final weights scored on as many training conversations for the train-vs-held-out gap. The stage's
    images are augmented (the stream's draws: the same on a rerun)."""
    config = nano_run(tmp_path, stage(datasets, steps=6, augment=AugmentConfig()), validate_every=2, keep_best=True)
    config.validation = [DatasetSpec("shapes_vqa", datasets("shapes_vqa", 16, "val"))]
    results = run_finetune(config)["stages"]["general"]
    lines = [json.loads(line) for line in (tmp_path / "01-general" / "train_log.jsonl").read_text().splitlines()]
    validations = [r for r in lines if r.get("event") == "validation"]
    assert [r["step"] for r in validations] == [2, 4, 6] and all("token_acc" in r for r in validations)
    [best] = [r for r in results["validation"] if r["event"] == "best"]
    assert best["validation_loss"] == min(r["loss"] for r in validations)
    fit = results["fit"]
    assert fit["validation"]["loss"] == pytest.approx(best["validation_loss"], rel=1e-4)  # the kept weights
    assert fit["gap"]["token_acc"] == pytest.approx(fit["train"]["token_acc"] - fit["validation"]["token_acc"])
    assert "validation" in finetune.summary({"stages": {"general": results}, "eval": {}, "checkpoint": "x"})


def test_a_validation_dataset_that_is_not_there_is_a_config_error(tmp_path, datasets):
    config = nano_run(tmp_path, stage(datasets))
    config.validation = [DatasetSpec("shapes_vqa", str(tmp_path / "nowhere"))]
    with pytest.raises(ConfigError, match=r"validation\[0\] \('shapes_vqa'\): path"):
        check_config(config)
