import pytest
import torch

from vlstack.checkpoint import save_model
from vlstack.data.collate import image_to_tensor
from vlstack.errors import InputError
from vlstack.infer.engine import Engine, EngineConfig, Request, SamplingParams
from vlstack.models.tokenizer import IMAGE
from vlstack.synthetic.scenes import shape_scenes


@pytest.fixture(scope="module")
def scenes():
    return shape_scenes(6, seed=1, image_size=32)


def _requests(scenes, **params):
    questions = ["what is on the left?", "colour of the shape", "how many shapes are there in the image?",
                 "describe it", "is there a circle?"]
    return [Request.ask(q, scenes[i].image, max_new_tokens=10, **params) for i, q in enumerate(questions)]


def test_batched_and_one_by_one_greedy_outputs_are_identical(engine, scenes):
    requests = _requests(scenes)
    batched = engine.generate(requests)
    single = [engine.generate([r])[0] for r in requests]
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]
    assert len({tuple(r.token_ids) for r in batched}) > 1  # the model really depends on its input


def test_engine_matches_the_models_own_generate(engine, scenes):
    request = _requests(scenes)[0]
    ids = torch.tensor([engine.prompt_ids(request)])
    pixels = image_to_tensor(scenes[0].image, engine.model.config.vision)[None]
    reference = engine.model.generate(ids, pixel_values=pixels, max_new_tokens=10,
                                      eos_token_id=engine.tokenizer.eos_token_id)
    got = engine.generate([request])[0].token_ids
    assert got == reference[0, : len(got)].tolist()


def test_cached_and_uncached_outputs_are_identical(engine, scenes):
    request = _requests(scenes)[1]
    cold = engine.generate([request])[0]
    assert (engine.cache.stats().misses, engine.prefix_cache.stats().misses) == (1, 1)
    warm = engine.generate([request])[0]  # the image prefix's KV states from the cache: no vision, no image prefill
    assert (engine.cache.stats().hits, engine.prefix_cache.stats().hits) == (0, 1)
    engine.prefix_cache.clear()
    features_only = engine.generate([request])[0]  # the image prefix prefilled again from cached visual tokens
    assert engine.cache.stats().hits == 1
    assert warm.token_ids == cold.token_ids == features_only.token_ids


def test_a_cached_image_prefix_serves_other_questions_and_batches(engine, scenes):
    """The prefix cache holds the prompt up to the image: a new question about a seen image reuses it,
    in a batch with rows of other lengths, and answers as a cold engine does."""
    first = [Request.ask("what colour is it?", scenes[0].image, max_new_tokens=8)]
    engine.generate(first)
    batch = [Request.ask("and on the left, which shape is there?", scenes[0].image, max_new_tokens=8),
             Request.ask("shape?", scenes[1].image, max_new_tokens=8),
             Request([{"role": "user", "content": "no image here"}], params=SamplingParams(max_new_tokens=8))]
    warm = engine.generate(batch)
    assert engine.prefix_cache.stats().hits == 1  # the first image's prefix; the second's is new
    engine.clear_caches()
    cold = [engine.generate([r])[0] for r in batch]
    assert [r.token_ids for r in warm] == [r.token_ids for r in cold]
    assert len({tuple(r.token_ids) for r in warm}) == 3


def test_the_prefix_cache_stays_under_its_byte_bound(nano_model, tokenizer, scenes):
    engine = Engine(nano_model, tokenizer, EngineConfig(fast_path_max_new_tokens=0))
    engine.generate([Request.ask("what is it?", scenes[0].image, max_new_tokens=2)])
    per_prefix = engine.prefix_cache.stats().bytes
    bounded = Engine(nano_model, tokenizer, EngineConfig(prefix_cache_bytes=2 * per_prefix + 1))
    bounded.generate([Request.ask("what is it?", s.image, max_new_tokens=2) for s in scenes])
    stats = bounded.prefix_cache.stats()
    assert len(scenes) > 2 and stats.entries == 2 and stats.bytes <= stats.max_bytes


def test_sampling_is_reproducible_per_request_seed(engine, scenes):
    requests = _requests(scenes, temperature=1.2, top_k=40, top_p=0.9, seed=7)
    first, again = engine.generate(requests), engine.generate(requests)
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    batched_vs_single = [engine.generate([r])[0].token_ids for r in requests]
    assert batched_vs_single == [r.token_ids for r in first]


@pytest.mark.parametrize("stop", [(), ("a",), ("zz", "e ")])
def test_streamed_text_concatenates_to_the_generated_text(engine, scenes, stop):
    for request in _requests(scenes, temperature=1.0, seed=3, stop=stop)[:3]:
        assert "".join(engine.stream(request)) == engine.generate([request])[0].text


def test_stop_strings_cut_the_text(engine, scenes):
    request = _requests(scenes, temperature=1.0, seed=3)[0]
    full = engine.generate([request])[0].text
    assert len(full) > 2
    stop = full[1:3]
    request.params.stop = (stop,)
    cut = engine.generate([request])[0]
    assert cut.finish_reason == "stop" and cut.text == full[: full.index(stop)]


def test_the_fast_path_shortens_the_budget_for_short_questions(nano_model, tokenizer, scenes):
    engine = Engine(nano_model, tokenizer, EngineConfig(fast_path_chars=15, fast_path_max_new_tokens=3))
    short = engine.generate([Request.ask("colour?", scenes[0].image, max_new_tokens=12)])[0]
    long = engine.generate([Request.ask("what colour is the shape on the left?", scenes[0].image,
                                        max_new_tokens=12)])[0]
    assert len(short.token_ids) <= 3 < len(long.token_ids) or long.finish_reason == "stop"


def test_placeholder_count_must_match_images(engine, scenes):
    request = Request([{"role": "user", "content": f"{IMAGE} {IMAGE} compare"}], [scenes[0].image])
    with pytest.raises(InputError, match="2 <image> placeholder\\(s\\) but 1 image"):
        engine.generate([request])


def test_prompts_over_the_positions_are_an_input_error(engine, scenes):
    with pytest.raises(InputError, match="over the model's 256 positions"):
        engine.generate([Request.ask("q", scenes[0].image, max_new_tokens=1000)])


def test_from_checkpoint(nano_model, tokenizer, tmp_path, scenes):
    save_model(nano_model, tmp_path / "ckpt", tokenizer=tokenizer)
    engine = Engine.from_checkpoint(tmp_path / "ckpt")
    direct = Engine(nano_model, tokenizer)
    request = _requests(scenes)[0]
    assert engine.generate([request])[0].token_ids == direct.generate([request])[0].token_ids


def test_stream_returns_the_final_result(engine, scenes):
    request = _requests(scenes)[0]
    stream = engine.stream(request)
    pieces = []
    while True:
        try:
            pieces.append(next(stream))
        except StopIteration as done:
            final = done.value
            break
    assert final.text == "".join(pieces) and final.finish_reason in ("stop", "length")
    assert final.token_ids == engine.generate([request])[0].token_ids


def test_from_checkpoint_places_the_model_on_the_configured_device(sharpened_checkpoint):
    engine = Engine.from_checkpoint(sharpened_checkpoint, EngineConfig(device="cpu"))
    assert engine.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in engine.model.parameters())
