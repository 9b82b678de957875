"""A pretrained LM brings its own tokenizer: vlstack's tokens are added, the embeddings grow, mismatches fail."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vlstack.checkpoint import load_checkpoint_tokenizer, save_model
from vlstack.errors import CheckpointError, ConfigError
from vlstack.models.config import ModelConfig
from vlstack.models.tokenizer import IMAGE, MASK, choose_tokenizer
from vlstack.models.vlm import build_model


def with_language_model(path) -> ModelConfig:
    config = ModelConfig.from_preset("nano")
    return dataclasses.replace(config, language=dataclasses.replace(config.language, pretrained_path=str(path)))


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_the_tokenizer_and_chat_template_come_from_the_language_model(tiny_language_model, model_type):
    directory = tiny_language_model(model_type)
    own = AutoTokenizer.from_pretrained(directory)
    config = with_language_model(directory)
    tokenizer = choose_tokenizer(None, config.language, texts=lambda: pytest.fail("no tokenizer is trained"))
    assert tokenizer.chat_template == own.chat_template
    text = "a red circle left of a blue square"
    assert tokenizer(text)["input_ids"] == own(text)["input_ids"]
    added = [tokenizer.convert_tokens_to_ids(t) for t in (IMAGE, MASK)]
    assert min(added) >= len(own)

    model = build_model(config, tokenizer)
    embeddings = model.language_model.get_input_embeddings().weight
    original = AutoModelForCausalLM.from_pretrained(directory).get_input_embeddings().weight
    assert embeddings.shape[0] == len(tokenizer) == model.config.language.vocab_size
    assert model.mlm.bias.shape[0] == len(tokenizer)
    assert torch.equal(embeddings[: len(own)], original)  # the learned rows are untouched
    new = list(range(len(own), len(tokenizer)))
    assert torch.allclose(embeddings[new], original.mean(dim=0).expand(len(new), -1))
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids(IMAGE)
    assert model.config.language.model_type == model_type and model.config.language.pretrained_path is None


def test_a_tokenizer_that_does_not_match_the_language_model_is_an_error(tiny_language_model, tokenizer):
    config = with_language_model(tiny_language_model())
    with pytest.raises(ConfigError, match=r"does not match the language model at .*tokens have other ids"):
        build_model(config, tokenizer)  # the session's BPE, trained on other texts


def test_a_language_model_saved_without_its_tokenizer_needs_one_named(tmp_path, tiny_language_model):
    bare = tmp_path / "lm"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_language_model() / name, bare / name)
    with pytest.raises(CheckpointError, match=r"holds no tokenizer .*`tokenizer:`"):
        choose_tokenizer(None, with_language_model(bare).language, texts=list)


def test_a_tokenizer_larger_than_a_fresh_vocabulary_is_an_error(tokenizer):
    config = ModelConfig.from_preset("nano")
    small = dataclasses.replace(config, language=dataclasses.replace(config.language, vocab_size=100))
    with pytest.raises(ConfigError, match=r"more than language.vocab_size = 100"):
        build_model(small, tokenizer)


def test_a_checkpoint_whose_tokenizer_outgrew_its_model_is_an_error(tmp_path, nano_model, tokenizer):
    save_model(nano_model, tmp_path / "ckpt", tokenizer)
    assert len(load_checkpoint_tokenizer(tmp_path / "ckpt")) == len(tokenizer)
    bigger = tokenizer.__class__.from_pretrained(tmp_path / "ckpt" / "tokenizer")
    bigger.add_tokens([f"<extra_{i}>" for i in range(600)])
    bigger.save_pretrained(tmp_path / "ckpt" / "tokenizer")
    with pytest.raises(CheckpointError, match=r"tokenizer has \d+ tokens, more than the language.vocab_size = 512"):
        load_checkpoint_tokenizer(tmp_path / "ckpt")
