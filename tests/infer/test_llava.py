"""Export to `transformers`' LLaVA: it loads offline, generates the Engine's tokens, and imports back."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from vlstack.checkpoint import load_checkpoint_tokenizer, load_model, save_model
from vlstack.errors import ConfigError
from vlstack.infer.engine import Engine, Request
from vlstack.infer.llava import export_llava, import_llava
from vlstack.models.config import ModelConfig
from vlstack.models.tokenizer import choose_tokenizer
from vlstack.models.vlm import build_model
from vlstack.synthetic.scenes import shape_scenes

QUESTIONS = ["What colour is the shape on the left?", "Describe the image.", "How many shapes are there?"]


def llava_ready(tiny_tower, tiny_language_model, kind: str) -> ModelConfig:
    """The nano preset on a pretrained tower and LM, without the parts LLaVA lacks."""
    config = ModelConfig.from_preset("nano")
    return dataclasses.replace(
        config, patch_positions=False,
        vision=dataclasses.replace(config.vision, pretrained_path=str(tiny_tower(kind)), global_every=1, num_prompts=0),
        language=dataclasses.replace(config.language, pretrained_path=str(tiny_language_model("qwen2"))))


@pytest.fixture(params=["siglip", "clip"])
def checkpoint(request, tmp_path, tiny_tower, tiny_language_model):
    config = llava_ready(tiny_tower, tiny_language_model, request.param)
    tokenizer = choose_tokenizer(None, config.language, texts=list)
    torch.manual_seed(0)
    return save_model(build_model(config, tokenizer), tmp_path / "ckpt", tokenizer)


def transformers_generate(directory, image, question: str, max_new_tokens: int) -> list[int]:
    processor = AutoProcessor.from_pretrained(directory, local_files_only=True)
    llava = LlavaForConditionalGeneration.from_pretrained(directory, local_files_only=True).eval()
    messages = [{"role": "user", "content": f"<image>\n{question}"}]
    prompt = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.no_grad():
        out = llava.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def test_transformers_generates_the_engines_tokens_from_the_export(tmp_path, checkpoint):
    report = export_llava(checkpoint, tmp_path / "hf")
    assert report["architecture"] == "LlavaForConditionalGeneration"
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "llava"
    engine = Engine.from_checkpoint(checkpoint)
    images = [s.image for s in shape_scenes(3, seed=5, image_size=48)]
    answers = set()
    for image, question in zip(images, QUESTIONS):
        ours = engine.generate([Request.ask(question, image, max_new_tokens=12)])[0]
        theirs = transformers_generate(tmp_path / "hf", image, question, 12)
        stops = [i for i, token in enumerate(theirs) if token in engine._stop_ids]  # transformers keeps the stop
        assert ours.token_ids == theirs[: stops[0] if stops else None]
        answers.add(tuple(ours.token_ids))
    assert len(answers) > 1  # not one answer for every image: the comparison sees the pixels


def test_an_import_of_the_export_round_trips(tmp_path, checkpoint):
    model = load_model(checkpoint)  # preprocessing unlike either tower's defaults, so that it must travel
    model.config.vision = dataclasses.replace(model.config.vision, image_mean=(0.4, 0.45, 0.5), resample="bilinear")
    save_model(model, checkpoint, load_checkpoint_tokenizer(checkpoint))
    export_llava(checkpoint, tmp_path / "hf")
    import_llava(tmp_path / "hf", tmp_path / "back")
    original, back = load_model(checkpoint), load_model(tmp_path / "back")
    for part in ("vision", "projector", "language_model"):
        ours, theirs = getattr(original, part).state_dict(), getattr(back, part).state_dict()
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.allclose(ours[key], theirs[key], atol=1e-6), (part, key)
    unused = {"window_size": original.config.vision.window_size}  # every block is global
    assert dataclasses.replace(back.config.vision, **unused) == original.config.vision  # preprocessing included
    image = shape_scenes(1, seed=9, image_size=48)[0].image
    request = Request.ask(QUESTIONS[0], image, max_new_tokens=10)
    assert (Engine.from_checkpoint(tmp_path / "back").generate([request])[0].token_ids
            == Engine.from_checkpoint(checkpoint).generate([request])[0].token_ids)
    assert len(load_checkpoint_tokenizer(tmp_path / "back")) == len(load_checkpoint_tokenizer(checkpoint))


def test_a_model_with_the_articles_parts_does_not_export(tmp_path, nano_model, tokenizer):
    save_model(nano_model, tmp_path / "ckpt", tokenizer)
    with pytest.raises(ConfigError, match="patch_positions = true"):
        export_llava(tmp_path / "ckpt", tmp_path / "hf")
    plainer = dataclasses.replace(nano_model.config, patch_positions=False)
    save_model(build_model(plainer, tokenizer), tmp_path / "ckpt2", tokenizer)
    with pytest.raises(ConfigError, match=r"global_every = 2 .*num_prompts = 2"):
        export_llava(tmp_path / "ckpt2", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_importing_a_llava_that_selects_other_features_is_an_error(tmp_path, checkpoint):
    export_llava(checkpoint, tmp_path / "hf")
    config_file = tmp_path / "hf" / "config.json"
    config_file.write_text(config_file.read_text().replace('"vision_feature_layer": -1', '"vision_feature_layer": -2'))
    with pytest.raises(ConfigError, match=r"config.json: vision_feature_layer = -2"):
        import_llava(tmp_path / "hf", tmp_path / "back")
