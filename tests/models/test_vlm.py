import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from vlstack.checkpoint import COMPLETE, load_model, save_model
from vlstack.errors import CheckpointError, InputError
from vlstack.models.config import ARTICLE_TABLE, LanguageConfig, ModelConfig
from vlstack.models.tokenizer import expand_image_placeholders, special_token_ids
from vlstack.models.vlm import QwenImageModel, count_parameters


def _batch(model: QwenImageModel, batch: int = 2, length: int = 7):
    torch.manual_seed(1)
    pixels = torch.randn(batch, 3, 32, 32)
    ids = torch.randint(10, 300, (batch, length))
    mask = torch.ones_like(ids)
    mask[-1, length - 2 :] = 0
    return pixels, ids, mask


def test_forward_shapes(nano_model):
    pixels, ids, mask = _batch(nano_model)
    out = nano_model(pixels, ids, mask)
    nv = nano_model.num_image_tokens()
    assert nv == 2 + 16
    assert out.image_tokens.shape == (2, nv, 64)
    assert out.image_embeds.shape == out.text_embeds.shape == (2, 32)
    assert torch.allclose(out.image_embeds.norm(dim=-1), torch.ones(2))
    assert out.text_hidden.shape == (2, 7, 64)
    assert out.fused.shape == (2, nv + 7, 64)
    assert out.itm_logits.shape == (2, 2)
    assert out.mlm_logits.shape == (2, 7, nano_model.config.language.vocab_size)
    assert out.vtm_pred.shape == (2, nv, 64)
    assert nano_model(pixels, ids, mask, fuse=False).fused is None


def test_text_embedding_ignores_padding(nano_model):
    pixels, ids, mask = _batch(nano_model)
    padded = ids.clone()
    padded[-1, -2:] = 7  # different pad ids beyond the mask must not matter
    a = nano_model(pixels, ids, mask, fuse=False).text_embeds
    b = nano_model(pixels, padded, mask, fuse=False).text_embeds
    assert torch.allclose(a, b, atol=1e-5)


def test_initial_temperature_is_the_seed_value(nano_model):
    assert nano_model.itc.temperature.item() == pytest.approx(0.07)


@pytest.mark.parametrize("name", list(ARTICLE_TABLE))
def test_presets_match_the_seed_table_per_component(name):
    counts = count_parameters(ModelConfig.from_preset(name))
    for component, target in ARTICLE_TABLE[name].items():
        assert abs(counts[component] / target - 1) <= 0.02, (component, counts[component], target)


def test_small_presets_are_small():
    assert count_parameters(ModelConfig.from_preset("nano"))["total"] < 5_000_000
    assert 80e6 < count_parameters(ModelConfig.from_preset("small"))["total"] < 120e6


def test_language_model_is_shaped_like_qwen():
    for name, hidden in (("qwen-image-s", 2048), ("qwen-image-m", 4096), ("qwen-image-l", 5120)):
        cfg = ModelConfig.from_preset(name).language
        assert cfg.model_type == "qwen2" and cfg.vocab_size == 151936 and cfg.hidden_size == hidden


def test_save_load_round_trip_is_bit_equal(nano_model, tokenizer, tmp_path):
    pixels, ids, mask = _batch(nano_model)
    save_model(nano_model, tmp_path / "ckpt", tokenizer=tokenizer)
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert files == {"config.yaml", "model.safetensors", "tokenizer", COMPLETE}  # COMPLETE: the save finished
    loaded = load_model(tmp_path / "ckpt")
    with torch.no_grad():
        a, b = nano_model(pixels, ids, mask), loaded(pixels, ids, mask)
    for field in ("image_embeds", "text_embeds", "fused", "itm_logits", "mlm_logits", "vtm_pred"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert loaded.config == nano_model.config


def test_large_weights_are_sharded_with_an_index(nano_model, tmp_path):
    from vlstack.checkpoint import load_weights, save_weights

    save_weights(nano_model.state_dict(), tmp_path, max_shard_size=200_000)
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    copy = QwenImageModel(nano_model.config, seed=9)
    assert not torch.equal(copy.vision.prompts, nano_model.vision.prompts)
    load_weights(copy, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), nano_model.state_dict().values()))


def test_saving_over_an_existing_checkpoint_replaces_it(nano_model, tmp_path):
    save_model(nano_model, tmp_path / "ckpt")
    save_model(nano_model, tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dirs left behind


def test_wrong_architecture_names_mismatched_keys(nano_model, nano_config, tmp_path):
    save_model(nano_model, tmp_path / "ckpt")
    nano_config.fusion.layers = 2
    nano_config.vision.width = 96
    other = QwenImageModel(nano_config)
    from vlstack.checkpoint import load_weights

    with pytest.raises(CheckpointError) as err:
        load_weights(other, tmp_path / "ckpt")
    message = str(err.value)
    assert "fusion.visual_proj.weight: checkpoint (64, 64) vs model (64, 96)" in message
    assert "missing keys" in message and "fusion.blocks.1." in message


def test_missing_and_corrupt_checkpoints(nano_model, tmp_path):
    with pytest.raises(CheckpointError, match="not a vlstack checkpoint"):
        load_model(tmp_path)
    save_model(nano_model, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(tmp_path / "ckpt")


def test_a_local_qwen2_checkpoint_loads_as_the_language_model(tmp_path, nano_config):
    hf_config = AutoConfig.for_model("qwen2", hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, vocab_size=600,
                                     max_position_embeddings=128, tie_word_embeddings=False)
    torch.manual_seed(3)
    reference = AutoModelForCausalLM.from_config(hf_config).eval()
    reference.save_pretrained(tmp_path / "qwen")
    nano_config.language = LanguageConfig(pretrained_path=str(tmp_path / "qwen"))
    model = QwenImageModel(nano_config).eval()
    assert model.config.language.hidden_size == 48 and model.config.language.pretrained_path is None
    assert model.config.language.vocab_size == 600 and not model.config.language.tie_embeddings
    ids = torch.randint(0, 600, (1, 9))
    with torch.no_grad():
        expected = reference(ids).logits
        got = model.language_model(ids).logits
    assert torch.equal(expected, got)
    # and the combined model still saves/loads without the original directory
    save_model(model, tmp_path / "vlm")
    (tmp_path / "qwen" / "config.json").unlink()
    assert torch.equal(load_model(tmp_path / "vlm").language_model(ids).logits, got)


def test_missing_language_model_directory(nano_config, tmp_path):
    nano_config.language = LanguageConfig(pretrained_path=str(tmp_path / "nothing"))
    with pytest.raises(CheckpointError, match="not a transformers model directory"):
        QwenImageModel(nano_config)


def _prompt(model, tokenizer, question: str, images: int = 1) -> torch.Tensor:
    ids = special_token_ids(tokenizer)
    raw = [ids.image] * images + tokenizer(question, add_special_tokens=False)["input_ids"]
    return torch.tensor([expand_image_placeholders(raw, ids.image, model.num_image_tokens())])


def test_generation_with_and_without_kv_cache_gives_the_same_tokens(nano_model, tokenizer):
    prompt = _prompt(nano_model, tokenizer, "a red circle")
    pixels = torch.randn(1, 3, 32, 32)
    cached = nano_model.generate(prompt, pixel_values=pixels, max_new_tokens=12, use_cache=True)
    uncached = nano_model.generate(prompt, pixel_values=pixels, max_new_tokens=12, use_cache=False)
    assert cached.shape == (1, 12)
    assert torch.equal(cached, uncached)


def test_generation_depends_on_the_image(nano_model, tokenizer):
    """The spliced visual tokens reach the LM: different images change the next-token logits."""
    prompt = _prompt(nano_model, tokenizer, "what")
    with torch.no_grad():
        a = nano_model.language_model(inputs_embeds=nano_model.embed_inputs(prompt, torch.zeros(1, 3, 32, 32)))
        b = nano_model.language_model(inputs_embeds=nano_model.embed_inputs(prompt, torch.ones(1, 3, 32, 32)))
    assert not torch.allclose(a.logits[0, -1], b.logits[0, -1])


@pytest.mark.parametrize("size", [32, 48])
def test_each_patch_token_gets_its_grid_position_and_prompts_none(nano_model, size):
    """The LM's rotary positions only see the raster order: the 2-D position is added to the
    projected patch tokens (the table resized for a grid other than the one it was built for)."""
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        projected = nano_model.projector(nano_model.encode_image(pixels))
        features = nano_model.image_features(pixels)
    grid = size // 8
    prompts = nano_model.config.vision.num_prompts
    assert features.shape == (2, prompts + grid * grid, 64) == projected.shape
    assert torch.equal(features[:, :prompts], projected[:, :prompts])
    added = features[:, prompts:] - projected[:, prompts:]
    assert torch.allclose(added[0], added[1]) and added[0].std() > 0.5  # one table, at unit scale
    assert torch.allclose(added[0], nano_model.patch_position((grid, grid))[0], atol=1e-6)


def test_sampling_is_reproducible_with_a_seed(nano_model, tokenizer):
    prompt = _prompt(nano_model, tokenizer, "a")
    pixels = torch.randn(1, 3, 32, 32)
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(nano_model.generate(prompt, pixel_values=pixels, max_new_tokens=6, do_sample=True,
                                        temperature=1.5, top_k=50, top_p=0.95))
    assert torch.equal(*runs)


def test_placeholder_count_must_match_the_images(nano_model, tokenizer):
    prompt = _prompt(nano_model, tokenizer, "a")
    with pytest.raises(InputError, match="2 image\\(s\\) need 2 x 18 <image> tokens, the text has 18"):
        nano_model.embed_inputs(prompt, torch.randn(2, 3, 32, 32))
    with pytest.raises(InputError, match="no images were given"):
        nano_model.embed_inputs(prompt)


def test_text_longer_than_the_positions_is_an_input_error(nano_model):
    limit = nano_model.config.language.max_positions
    ids = torch.ones(1, limit + 1, dtype=torch.long)
    with pytest.raises(InputError, match=f"exceeds the language model's {limit} positions"):
        nano_model.encode_text(ids, torch.ones_like(ids))
    with pytest.raises(InputError, match="\\+ 20 new"):
        nano_model.generate(ids[:, : limit - 10], max_new_tokens=20)
