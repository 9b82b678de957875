from __future__ import annotations

import math
import random

import pytest
import torch

from vlstack.data.clean import perplexity
from vlstack.data.clean.perplexity import (
    UNK,
    CausalLMPerplexity,
    NGramLM,
    PerplexityConfig,
    WordFrequencyLM,
    build_perplexity_model,
    check_perplexity,
    perplexity_limit,
    tokenize,
)
from vlstack.errors import ConfigError
from vlstack.synthetic.scenes import shape_scenes


def captions(n: int, seed: int) -> list[str]:
    return [s.caption for s in shape_scenes(n, seed)] + [s.caption for s in shape_scenes(n, seed, lang="zh")]


@pytest.fixture(scope="module")
def reference() -> list[str]:
    return captions(300, seed=0)


def gibberish_en(rng: random.Random) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(3, 8))) for _ in range(8))


def gibberish_zh(rng: random.Random) -> str:
    return "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(16))


def test_tokenize_words_for_english_characters_for_chinese():
    assert tokenize("A red circle, 左边是圆形!", "word") == ["a", "red", "circle", ",", *"左边是圆形", "!"]
    assert tokenize("Ab  c", "char") == ["a", "b", " ", "c"]


def test_kneser_ney_matches_hand_computed_probability():
    # corpus "a b", "a b", "a c", bigrams. Discounts n1 / (n1 + 2 n2): D2 = 2 / 6 on the raw bigram
    # counts, D1 = 3 / 5 on the continuation counts a:1 b:1 c:1 </s>:2 (total 5, 4 types).
    # Unigram over {a, b, c, </s>, <unk>}: P1(b) = (1 - 0.6 + 0.6 * 4 / 5) / 5 = 0.176, P1(<unk>) = 0.096.
    lm = NGramLM.train(["a b", "a b", "a c"], order=2, open_vocab_size=13)
    assert lm.discount == {2: pytest.approx(1 / 3), 1: pytest.approx(0.6)}
    # after "a" (seen 3 times, 2 follower types): (2 - 1/3 + 1/3 * 2 * 0.176) / 3
    assert lm.prob("b", ["a"]) == pytest.approx((2 - 1 / 3 + 2 / 3 * 0.176) / 3)
    # at the start, only "a" followed <s> (3 times): b gets the back-off share 1/3 * 1 * 0.176 / 3
    assert lm.prob("b", []) == pytest.approx(0.176 / 9)
    # <unk> is the total for unseen units; one of them shares it with the 13 - 3 the corpus lacks
    assert lm.prob(UNK, ["a"]) == pytest.approx(2 / 3 * 0.096 / 3)
    assert lm.prob("zebra", ["a"]) == pytest.approx(2 / 3 * 0.096 / 3 / 10)


@pytest.mark.parametrize(("order", "unit"), [(1, "word"), (2, "word"), (3, "word"), (4, "char")])
def test_probabilities_sum_to_one_over_the_vocabulary(order, unit, reference):
    lm = NGramLM.train(reference, order=order, unit=unit)
    assert UNK in lm.vocab
    contexts = [[], ["a"], ["a", "red"], ["on", "the", "left"], ["never", "seen"], list("左边是"), list("a red ")]
    for context in contexts:
        assert sum(lm.prob(w, context) for w in lm.vocab) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize(("order", "unit"), [(3, "word"), (5, "char")])
def test_in_domain_below_threshold_below_gibberish(order, unit, reference):
    lm = NGramLM.train(reference, order=order, unit=unit)
    rng = random.Random(0)
    held_out = captions(20, seed=1)  # other scenes than the reference corpus
    in_domain = lm.perplexities(held_out)
    gibberish = lm.perplexities([gibberish_en(rng) for _ in range(20)] + [gibberish_zh(rng) for _ in range(20)])
    assert max(in_domain) < 10 < min(gibberish)
    if unit == "word":  # the article's limit is a word-level perplexity
        assert max(in_domain) < NGramLM.default_limit < min(gibberish)


def test_shuffled_words_score_higher_than_their_caption(reference):
    lm = NGramLM.train(reference)
    caption = "a red square on the left and a yellow triangle on the right"
    assert lm.perplexity(" ".join(reversed(caption.split()))) > 10 * lm.perplexity(caption)


def test_check_perplexity_verdicts(reference):
    lm = NGramLM.train(reference)
    keep, drop, empty = check_perplexity([reference[0], gibberish_en(random.Random(2)), "  "], lm)
    assert keep.keep and keep.score < 150
    assert drop.reason == perplexity.PERPLEXITY and drop.score > 150
    assert empty.reason == perplexity.PERPLEXITY and math.isinf(empty.score)


def test_training_needs_text():
    with pytest.raises(ConfigError, match="non-empty"):
        NGramLM.train([])


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory, tokenizer):
    """A randomly initialised 1-layer Qwen2 and the session tokenizer, saved as a local HF directory."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
    )
    path = tmp_path_factory.mktemp("causal_lm")
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_hf_causal_lm_adapter(tiny_causal_lm, tokenizer):
    model = build_perplexity_model(PerplexityConfig(model_path=str(tiny_causal_lm)))
    assert isinstance(model, CausalLMPerplexity)
    texts = ["a red circle on the left", "左边是一个绿色的三角形", "x"]
    batched = model.perplexities(texts)
    one_by_one = [model.perplexities([t])[0] for t in texts]
    assert batched == pytest.approx(one_by_one, rel=1e-4)  # right padding does not change a text's score
    vocab = len(tokenizer)
    assert all(vocab / 2 < p < vocab * 2 for p in batched)  # an untrained LM is close to uniform


def test_hf_adapter_needs_an_existing_directory(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        CausalLMPerplexity(tmp_path / "missing")


def test_build_defaults_to_the_ngram_model(reference):
    model = build_perplexity_model(PerplexityConfig(order=2, unit="char"), reference)
    assert isinstance(model, NGramLM) and (model.order, model.unit) == (2, "char")


def test_without_a_reference_the_word_frequency_model_judges_english_and_chinese():
    model = build_perplexity_model(PerplexityConfig())
    assert isinstance(model, WordFrequencyLM)
    captions = ["A man riding a bicycle down a city street.", "Two dogs playing with a ball in the park.",
                "一只猫睡在窗边的木椅上。", "孩子们在海边放风筝。"]
    rng = random.Random(0)
    garbled = [gibberish_en(rng), gibberish_zh(rng), "qzv xkwp trrnb oopd", "ä¸\x80å\x8fªç\x8c«"]  # last: mojibake
    limit = perplexity_limit(model, PerplexityConfig())
    assert limit == WordFrequencyLM.default_limit
    assert max(model.perplexities(captions)) < limit / 2 and min(model.perplexities(garbled)) > 10 * limit
    assert model.perplexity("!!! ...") == math.inf  # nothing to score
    assert perplexity_limit(model, PerplexityConfig(max_perplexity=99.0)) == 99.0
    with pytest.raises(ConfigError, match="wordfreq has no list for 'xx'"):
        WordFrequencyLM(["xx"])
