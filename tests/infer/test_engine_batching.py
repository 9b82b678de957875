"""The Engine's batch mechanics: one vision pass per batch, finished rows leaving it, text decoded where read."""

import pytest
import torch

from vlstack.infer.engine import Engine, Request
from vlstack.models.tokenizer import IMAGE
from vlstack.synthetic.scenes import shape_scenes


@pytest.fixture(scope="module")
def images():
    return [s.image for s in shape_scenes(4, seed=2, image_size=32)]


def count_vision_batches(engine: Engine) -> list[int]:
    """Wrap `engine.encode_images`; the returned list gets the batch size of every vision pass."""
    sizes, encode = [], engine.encode_images

    def counted(pixels: torch.Tensor) -> torch.Tensor:
        sizes.append(len(pixels))
        return encode(pixels)

    engine.encode_images = counted
    return sizes


def test_a_batchs_new_images_are_encoded_in_one_pass_each_once(engine, images):
    requests = [Request.ask(q, image, max_new_tokens=4) for q, image in
                zip(["left?", "colour?", "how many?", "left again?"], [images[0], images[1], images[2], images[0]])]
    vision_batches = count_vision_batches(engine)
    engine.generate(requests)
    assert vision_batches == [3]  # 3 distinct images, the duplicate encoded once
    stats = engine.cache.stats()
    assert (stats.misses, stats.hits, stats.entries) == (3, 0, 3)  # one lookup per distinct image
    assert engine.prefix_cache.stats().misses == 3  # one image prefix per distinct image
    engine.generate(requests)
    assert vision_batches == [3] and engine.prefix_cache.stats().hits == 3  # all cached: no vision pass
    engine.prefix_cache.clear()
    engine.generate(requests)
    assert vision_batches == [3] and engine.cache.stats().hits == 3  # prefixes prefilled from cached features


def test_a_batched_vision_pass_matches_one_image_passes(engine, images):
    batched = engine._visual_tokens_of(images)
    engine.cache.clear()
    single = [engine.visual_tokens(image) for image in images]
    for b, s in zip(batched, single):  # a batch may round differently from one image: allclose, not equal
        torch.testing.assert_close(b, s, rtol=1e-5, atol=1e-5)
    assert engine.visual_tokens(images[0]) is single[0]  # a cache hit returns the stored tensor itself


def test_multi_image_requests_get_their_own_images_in_order(engine, images):
    two = Request([{"role": "user", "content": f"{IMAGE} {IMAGE} compare"}], [images[3], images[1]])
    two.params.max_new_tokens = 8
    swapped = Request([{"role": "user", "content": f"{IMAGE} {IMAGE} compare"}], [images[1], images[3]])
    swapped.params.max_new_tokens = 8
    requests = [Request.ask("what is it?", images[1], max_new_tokens=8), two, swapped]
    vision_batches = count_vision_batches(engine)
    batched = [r.token_ids for r in engine.generate(requests)]
    assert vision_batches == [2]
    single = []
    for request in requests:  # each request alone, its images encoded on their own
        engine.clear_caches()
        single.append(engine.generate([request])[0].token_ids)
    assert batched == single
    assert batched[1] != batched[2]  # the order of the images matters to the answer


def test_finished_rows_leave_the_batch_and_the_others_decode_as_alone(engine, images):
    requests = [Request.ask("what is on the left?", image, max_new_tokens=n) for image, n in zip(images, [2, 9, 5, 1])]
    batch_sizes = []
    hook = engine.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: batch_sizes.append(len(kwargs["attention_mask"])),
        with_kwargs=True)
    batched = engine.generate(requests)
    hook.remove()
    single = [engine.generate([r])[0] for r in requests]
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]
    # a row that picked its k-th token (a stop id is not kept) is in the batch of the forward pass after step k
    steps = [len(r.token_ids) + (r.finish_reason == "stop") for r in batched]
    assert batch_sizes == [4] + [sum(s > k for s in steps) for k in range(1, max(steps))]
    assert batch_sizes[-1] < 4


def scripted(engine: Engine, text: str) -> None:
    """Make `engine` pick the tokens of `text`, then the end-of-text id (the model's logits are ignored)."""
    ids = iter(engine.tokenizer(text, add_special_tokens=False)["input_ids"] + [engine.tokenizer.eos_token_id])
    engine._pick = lambda logits, params, generators: [next(ids)]  # one row


def test_incomplete_characters_are_held_back_while_streaming(engine):
    text = "a\u20acb"  # '€' is three byte-level tokens: the first two decode to U+FFFD
    assert len(engine.tokenizer(text, add_special_tokens=False)["input_ids"]) == 5
    scripted(engine, text)
    stream = engine.stream(Request.ask("say it", max_new_tokens=10))
    pieces = list(stream)
    assert "".join(pieces) == text and not any("\ufffd" in piece for piece in pieces)
    scripted(engine, text)
    assert engine.generate([Request.ask("say it", max_new_tokens=10)])[0].text == text


@pytest.mark.parametrize("stop, expected", [(("b",), "a\u20ac"), (("\u20ac",), "a"), (("zz",), "a\u20acb")])
def test_stop_strings_cut_text_decoded_token_by_token(engine, stop, expected):
    results = []
    for run in (engine.generate, lambda requests: ["".join(engine.stream(requests[0]))]):
        scripted(engine, "a\u20acb")
        results.append(run([Request.ask("say it", max_new_tokens=10, stop=stop)])[0])
    assert results[0].text == results[1] == expected
