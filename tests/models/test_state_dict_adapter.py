"""Pretrained SigLIP / CLIP towers: the features of the `transformers` model, its preprocessing, and back."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from PIL import Image
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from vlstack.data.collate import image_to_tensor
from vlstack.errors import ConfigError
from vlstack.models.config import ModelConfig, VisionConfig
from vlstack.models.state_dict_adapter import tower_to_hf
from vlstack.models.vlm import QwenImageModel
from vlstack.synthetic.scenes import shape_scenes

HF_TOWERS = {"siglip": SiglipVisionModel, "clip": CLIPVisionModel}
PROCESSORS = {"siglip": SiglipImageProcessor, "clip": CLIPImageProcessor}


def with_tower(path, **vision) -> ModelConfig:
    config = ModelConfig.from_preset("nano")
    return dataclasses.replace(config, vision=dataclasses.replace(config.vision, pretrained_path=str(path),
                                                                   **{"global_every": 1, "num_prompts": 0, **vision}))


def llava_features(hf, pixels: torch.Tensor) -> torch.Tensor:
    """What LLaVA feeds its projector: the last encoder layer's hidden states."""
    with torch.no_grad():
        return hf(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]


@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_pretrained_tower_features_equal_the_transformers_model(tiny_tower, kind):
    hf = HF_TOWERS[kind].from_pretrained(tiny_tower(kind)).eval()
    model = QwenImageModel(with_tower(tiny_tower(kind))).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model.encode_image(pixels)  # [B, (1 CLS +) 16 patches, 32]
    theirs = llava_features(hf, pixels)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-5)
    # the shape comes from the checkpoint, and the saved config no longer points at the directory
    vision = model.config.vision
    assert (vision.width, vision.layers, vision.pretrained_path, vision.final_norm) == (32, 2, None, False)


def test_the_articles_parts_start_neutral_on_a_pretrained_tower(tiny_tower):
    hf = SiglipVisionModel.from_pretrained(tiny_tower()).eval()
    model = QwenImageModel(with_tower(tiny_tower(), global_every=2, window_size=2)).eval()
    assert not model.vision.is_global(0)  # block 0 is hierarchical: window stage, then the checkpoint's attention
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(pixels), llava_features(hf, pixels), atol=1e-5)
    # and the window stage is trainable: its output projection receives gradients
    model.train()
    model.encode_image(pixels).sum().backward()
    assert model.vision.blocks[0].attn.window_attn.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_preprocessing_follows_the_towers_image_processor(tiny_tower, kind):
    model = QwenImageModel(with_tower(tiny_tower(kind)))
    processor = PROCESSORS[kind].from_pretrained(tiny_tower(kind))
    image = shape_scenes(1, seed=3, image_size=53)[0].image.resize((53, 41))  # not square: CLIP crops
    theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(image_to_tensor(image, model.config.vision), theirs, atol=1e-5)


def test_bad_tower_directories_are_clear_errors(tmp_path, tiny_tower):
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ConfigError, match=r"config.json: model_type 'vit' is not a supported vision tower"):
        QwenImageModel(with_tower(tmp_path / "vit"))
    shutil.copytree(tiny_tower(), tmp_path / "tower")
    processor = tmp_path / "tower" / "preprocessor_config.json"
    processor.write_text(processor.read_text().replace('"height": 32', '"height": 48').replace('"width": 32',
                                                                                                '"width": 48'))
    with pytest.raises(ConfigError, match=r"preprocessor_config.json: the image size 48 .* disagrees with image_size 32"):
        QwenImageModel(with_tower(tmp_path / "tower"))


@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_a_plain_tower_goes_back_to_transformers(tiny_tower, kind):
    model = QwenImageModel(with_tower(tiny_tower(kind))).eval()
    with torch.no_grad():  # move the position conv off the identity: the export folds it into the table
        model.vision.pos_embed.conv.weight.add_(0.01 * torch.randn_like(model.vision.pos_embed.conv.weight))
    kind, config, state = tower_to_hf(model.vision)
    model_class, config_class = ((SiglipVisionModel, SiglipVisionConfig) if kind == "siglip"
                                 else (CLIPVisionModel, CLIPVisionConfig))
    hf = model_class(config_class(**{k: v for k, v in config.items() if k != "model_type"})).eval()
    hf.load_state_dict(state)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(pixels), llava_features(hf, pixels), atol=1e-5)


def test_a_tower_with_the_articles_parts_has_no_transformers_counterpart():
    with pytest.raises(ConfigError, match=r"global_every = 2 .*num_prompts = 2 .*final_norm = true"):
        tower_to_hf(QwenImageModel(ModelConfig.from_preset("nano")).vision)
    plain = dataclasses.replace(ModelConfig.from_preset("nano").vision, global_every=1, num_prompts=0, final_norm=False)
    nano = ModelConfig.from_preset("nano")
    assert tower_to_hf(QwenImageModel(ModelConfig(vision=plain, language=nano.language,
                                                  fusion=nano.fusion)).vision)[0] == "siglip"
    stemmed = dataclasses.replace(plain, stem="conv")
    with pytest.raises(ConfigError, match="vision.stem = conv"):
        tower_to_hf(QwenImageModel(ModelConfig(vision=stemmed, language=nano.language, fusion=nano.fusion)).vision)


def test_image_to_tensor_crops_when_asked():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    vision = VisionConfig(image_size=16, crop=True, image_mean=(0, 0, 0), image_std=(1, 1, 1))
    assert image_to_tensor(image, vision).shape == (3, 16, 16)


def test_an_open_clip_tower_gives_its_tokens_and_preprocessing(tiny_open_clip):
    import open_clip

    reference, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_open_clip}")
    visual = reference.visual.eval()
    model = QwenImageModel(with_tower(tiny_open_clip)).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        theirs = visual.transformer(visual._embeds(pixels))  # [B, 1 + 16, 32]: the tokens before ln_post
        assert torch.allclose(model.encode_image(pixels), theirs, atol=1e-5)
    vision = model.config.vision
    assert (vision.activation, vision.crop, vision.image_mean) == ("quick_gelu", True, (0.5, 0.4, 0.3))
    image = shape_scenes(1, seed=3, image_size=53)[0].image.resize((53, 41))
    # open_clip resizes PIL images, vlstack uint8 tensors: the same filter, rounded apart by at most a level
    assert (image_to_tensor(image, vision) - preprocess(image)).abs().max() < 0.05
