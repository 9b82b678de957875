"""Synthetic instruction data: deterministic, valid conversations, held-out splits, safety pairs."""

import random

import pytest

from vlstack.data.conversations import REFUSAL, UNSAFE_ANSWER, conversation_problem
from vlstack.errors import DataError
from vlstack.eval.benchmarks.aokvqa import AOKVQA
from vlstack.eval.benchmarks.base import SHORT_ANSWER
from vlstack.eval.conversations import is_refusal
from vlstack.synthetic import phrasings
from vlstack.synthetic.instructions import (
    DATASETS,
    HARMFUL_VERBS,
    REFUSALS,
    SAFE_VERBS,
    TARGETS,
    instruction_samples,
)
from vlstack.synthetic.scenes import vqa_sample


@pytest.mark.parametrize("name", list(DATASETS))
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_dataset_gives_trainable_conversations(name, lang):
    samples = instruction_samples(name, 4, seed=1, lang=lang)
    assert len(samples) == 4 and len({s.id for s in samples}) == 4
    for sample in samples:
        assert conversation_problem(sample) is None
        assert sample.meta["dataset"] == name and sample.meta["lang"] == lang


def test_same_arguments_same_samples_and_splits_share_no_image():
    first, again = instruction_samples("shapes_vqa", 30, seed=2), instruction_samples("shapes_vqa", 30, seed=2)
    assert [s.conversations for s in first] == [s.conversations for s in again]
    assert [s.images[0].data for s in first] == [s.images[0].data for s in again]
    held_out = instruction_samples("shapes_vqa", 30, seed=2, split="test")
    assert not {s.images[0].data for s in first} & {s.images[0].data for s in held_out}
    # nor with the evaluation mini-suites, which draw vqa_sample(seed, index) with small indices
    suite = {vqa_sample(seed, i).images[0].data for seed in (0, 2) for i in range(30)}
    assert not suite & {s.images[0].data for s in instruction_samples("shapes_vqa", 30, seed=0)}


def test_shape_questions_cover_every_type_and_answer_from_the_scene():
    samples = instruction_samples("shapes_vqa", 200, seed=0)
    assert {s.meta["question_type"] for s in samples} == {"color", "shape", "count", "count_color", "position",
                                                          "exists"}
    assert {s.meta["form"] for s in samples} == {"open", "choice", "yes_no"}
    for s in samples:
        objects = s.meta["objects"][0]
        if s.meta["question_type"] == "count" and s.meta["form"] == "open":
            assert s.conversations[1]["value"] == str(len(objects))
        if s.meta["form"] == "choice":  # the letter names the true answer among the options
            letter = s.conversations[1]["value"]
            assert f"\n{letter}. {s.meta['choice']}\n" in s.conversations[0]["value"]
    exists = [s for s in samples if s.meta["form"] == "yes_no"]
    assert 0.35 < sum(s.conversations[1]["value"] == "yes" for s in exists) / len(exists) < 0.65


def _prompts(kind: str, split: str, lang: str = "en") -> set[str]:
    """Every prompt `phrasings` writes in `split` for one fixed open question or one object."""
    rng = random.Random(0)
    if kind == "open":
        return {phrasings.open_question("QQQ", split, lang, rng) for _ in range(400)}
    return {phrasings.exists_question("circle", True, split, lang, rng)[0] for _ in range(400)}


@pytest.mark.parametrize("kind", ["open", "exists"])
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_held_out_phrasings_are_new_combinations_of_trained_parts(kind, lang):
    train, test = _prompts(kind, "train", lang), _prompts(kind, "test", lang)
    assert test and not train & test  # validation and test ask in phrasings training never shows
    parts = (phrasings.LEAD_INS, phrasings.INSTRUCTIONS) if kind == "open" else \
        (phrasings.EXISTS_FORMS, phrasings.EXISTS_INSTRUCTIONS)
    for table in parts:  # every lead-in, question form and instruction still trains, in other combinations
        for part in table[lang]:
            stem = part.replace("{}", "circle").strip()
            assert not stem or any(stem in prompt for prompt in train), part


def test_the_benchmarks_own_formats_are_trained_on():
    assert SHORT_ANSWER.format(question="QQQ") in _prompts("open", "train")
    assert phrasings.POPE_TEMPLATE.format("circle") in _prompts("exists", "train")
    assert "QQQ" in _prompts("open", "train")  # the bare question too
    choice_line = AOKVQA.template.split("{options}\n")[1]
    train = instruction_samples("shapes_vqa", 300, seed=0)
    assert any(s.conversations[0]["value"].endswith(choice_line) for s in train)
    test = instruction_samples("shapes_vqa", 300, seed=0, split="test")
    assert not any(s.conversations[0]["value"].endswith(choice_line) for s in test)  # its combinations all train


def test_safety_pairs_harmful_requests_with_safe_look_alikes():
    samples = instruction_samples("safety", 200, seed=0)
    harmful = [s for s in samples if s.meta[REFUSAL]]
    safe = [s for s in samples if not s.meta[REFUSAL]]
    assert 70 < len(harmful) < 130
    assert all(s.conversations[1]["value"] == REFUSALS["en"] and s.meta[UNSAFE_ANSWER] for s in harmful)
    assert all(not is_refusal(s.conversations[1]["value"]) and UNSAFE_ANSWER not in s.meta for s in safe)
    assert all(any(v in s.conversations[0]["value"] for v in HARMFUL_VERBS["en"]) for s in harmful)
    assert all(any(v in s.conversations[0]["value"] for v in SAFE_VERBS["en"]) for s in safe)
    assert all(any(t in s.conversations[0]["value"] for t in TARGETS["en"]) for s in samples)


def test_held_out_safety_intents_never_occur_in_training():
    train = {s.meta["intent"] for s in instruction_samples("safety", 300, seed=0)}
    test = {s.meta["intent"] for s in instruction_samples("safety", 100, seed=0, split="test")}
    assert train and test and not train & test
    # every verb still occurs in training, in other pairs
    assert {i.split()[0] for i in train} == set(HARMFUL_VERBS["en"]) | set(SAFE_VERBS["en"])


def test_refusals_are_recognised_in_both_languages():
    assert is_refusal(REFUSALS["en"]) and is_refusal(REFUSALS["zh"]) and is_refusal("I can’t help with that")
    assert not is_refusal("blue") and not is_refusal("蓝色")


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(DataError, match="valid datasets: shapes_vqa"):
        instruction_samples("shapes", 1)
    with pytest.raises(DataError, match="valid splits"):
        instruction_samples("shapes_vqa", 1, split="dev")
    with pytest.raises(DataError, match="valid: en, zh"):
        instruction_samples("shapes_vqa", 1, lang="fr")
