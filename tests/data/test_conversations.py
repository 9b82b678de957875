"""Conversation data for instruction tuning: LLaVA and OpenAI readers, strict checks, exact label masks."""

import base64
import copy
import io
import json
import random
import re

import pytest
import torch
from PIL import Image

from vlstack.data.augment import AugmentConfig
from vlstack.data.collate import IGNORE_INDEX, CollateConfig, SampleCollator
from vlstack.data.conversations import (
    UNSAFE_ANSWER,
    ConversationEncoder,
    check_conversations,
    conversation_problem,
    encode_conversations,
    load_conversations,
)
from vlstack.data.schema import ImageRef, Rejected, Sample
from vlstack.data.sources import read_messages
from vlstack.errors import DataError
from vlstack.models.config import VisionConfig
from vlstack.models.tokenizer import IM_END, IM_START, special_token_ids
from vlstack.synthetic.instructions import instruction_samples
from vlstack.synthetic.scenes import encode_image, shape_scene
from vlstack.train.objectives import sft_objective

PER_IMAGE = 4


def png(color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, "PNG")
    return buffer.getvalue()


def conversation(*values, images=1) -> Sample:
    """Turns alternate human, gpt, ... unless a value is a (role, text) pair."""
    turns = [dict(zip(("from", "value"), v if isinstance(v, tuple) else (("human", "gpt")[i % 2], v)))
             for i, v in enumerate(values)]
    refs = [ImageRef(f"{i}.png" if images > 1 else "png", png()) for i in range(images)]
    return Sample("c", "vqa", refs, conversations=turns)


@pytest.fixture
def collator(tokenizer) -> SampleCollator:
    config = CollateConfig(num_image_tokens=PER_IMAGE, max_length=256, vision=VisionConfig(image_size=16))
    return SampleCollator(tokenizer, config)


def test_labels_are_exactly_the_assistant_tokens(collator, tokenizer):
    answers = ["a red circle on the left", "2", "blue"]
    sample = conversation("<image>\nDescribe the picture.", answers[0], "How many shapes are there?", answers[1],
                          "What color is the shape on the right?", answers[2])
    sample.meta["system"] = "You answer briefly."
    ids, labels = collator.encode(sample)
    ids_t, labels_t = torch.tensor(ids), torch.tensor(labels)
    supervised = labels_t != IGNORE_INDEX
    assert (labels_t[supervised] == ids_t[supervised]).all()  # labels are the tokens themselves
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    expected = [t for a in answers for t in tokenizer(a, add_special_tokens=False)["input_ids"] + [im_end]]
    assert labels_t[supervised].tolist() == expected  # every assistant token, and nothing else
    # each supervised run starts right after "<|im_start|>assistant\n"
    header = tokenizer(f"{IM_START}assistant\n", add_special_tokens=False)["input_ids"]
    starts = [i for i in range(len(ids)) if supervised[i] and (i == 0 or not supervised[i - 1])]
    assert len(starts) == 3 and all(ids[s - len(header) : s] == header for s in starts)
    text = tokenizer.decode(ids)
    assert text.startswith(f"{IM_START}system\nYou answer briefly.{IM_END}")  # OpenAI system message kept
    assert ids.count(special_token_ids(tokenizer).image) == PER_IMAGE


def test_a_template_that_drops_the_answer_is_reported_not_a_silent_zero_loss(collator, tokenizer):
    broken = copy.deepcopy(tokenizer)
    broken.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|im_start|>user\n' + "
                            "m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}")
    bad_collator = SampleCollator(broken, collator.cfg)
    samples = [conversation("<image>\nWhat color?", "red")]
    batch = bad_collator(samples)
    assert batch["rejected"][0]["reason"] == "no_supervised_tokens"
    with pytest.raises(DataError, match="no_supervised_tokens"):
        encode_conversations(samples, bad_collator)
    # and a batch that reaches the loss without any label fails loudly
    data, _ = encode_conversations(samples, collator)
    data["labels"][:] = IGNORE_INDEX
    with pytest.raises(DataError, match="no supervised token"):
        sft_objective(None, data)


@pytest.mark.parametrize("values, images, problem", [
    ((), 1, "no conversation turns"),
    (("<image>\nQ", "A", ("gpt", "A again")), 1, "turn 2 is 'gpt' where 'human' was expected"),
    (("<image>\nQ", "A", "unanswered"), 1, "ends with a human turn"),
    (("<image>\nQ", "  "), 1, "turn 1 (gpt) is empty"),
    (("", "<image> A"), 1, "turn 0 (human) is empty"),
    (("Q", "<image> A"), 1, "images belong in human turns"),
    (("<image>\nQ", "A"), 2, "1 <image> placeholder(s) for 2 image(s)"),
    (("<image><image>\nQ", "A"), 1, "more <image> placeholders (2) than images (1)"),
])
def test_malformed_conversations_are_named(values, images, problem):
    sample = conversation(*values, images=images)
    assert conversation_problem(sample) is not None
    with pytest.raises(DataError, match=re.escape(problem)):
        check_conversations([conversation("<image>\nfine", "yes"), sample], "recipe")


def test_wrong_roles_are_named_and_an_image_only_question_is_fine():
    sample = conversation("<image>\nQ", ("assistant", "A"))
    assert "turn 1 has role 'assistant'; valid roles: human, gpt" == conversation_problem(sample)
    assert conversation_problem(conversation("<image>", "a red circle")) is None  # captioning: the image is the ask


def test_llava_and_openai_files_load_with_strict_checks(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    data_url = "data:image/png;base64," + base64.b64encode(png((0, 0, 255))).decode()
    records = [
        {"id": "llava", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nColor?"},
                                                           {"from": "gpt", "value": "red"}]},
        {"id": "openai", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.png"}},
                                         {"type": "text", "text": "Color?"}]},
            {"role": "assistant", "content": "red"},
            {"role": "user", "content": [{"type": "text", "text": "And this one?"},
                                         {"type": "image", "image": data_url}]},
            {"role": "assistant", "content": [{"type": "text", "text": "blue"}]}]},
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    llava, openai = load_conversations(path, tmp_path)
    assert llava.conversations[0]["value"] == "<image>\nColor?"
    assert [t["value"] for t in openai.conversations] == ["<image>\nColor?", "red", "And this one?\n<image>", "blue"]
    assert openai.meta["system"] == "Be brief." and [r.name for r in openai.images] == ["0.png", "1.png"]
    assert openai.images[1].data == png((0, 0, 255))

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([records[1], {"id": "tool", "messages": [{"role": "tool", "content": "x"}]},
                               {"id": "remote", "messages": [{"role": "user", "content": [
                                   {"type": "image_url", "image_url": {"url": "https://x.org/a.png"}}]},
                                   {"role": "assistant", "content": "a"}]}]))
    reasons = {i.id: i.reason for i in read_messages(bad, tmp_path) if isinstance(i, Rejected)}
    assert reasons == {"tool": "bad_record", "remote": "unsupported_image"}
    with pytest.raises(DataError, match="2 record\\(s\\) of .*bad.json cannot be read:\n  tool: bad_record"):
        load_conversations(bad, tmp_path)
    unanswered = tmp_path / "unanswered.json"
    unanswered.write_text(json.dumps([{"id": "q", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}, {"from": "human", "value": "Q2"}]}]))
    with pytest.raises(DataError, match="q: ends with a human turn"):
        load_conversations(unanswered, tmp_path)


def test_encoded_set_has_one_row_per_sample_and_unsafe_continuations(collator, tokenizer):
    samples = instruction_samples("safety", 12, seed=0) + instruction_samples("interleaved", 2, seed=0)
    data, rejected = encode_conversations(samples, collator, unsafe=True)
    assert not rejected and len(data["input_ids"]) == 14
    assert data["pixel_values"].shape == (14, 3, 3, 16, 16)  # K = 3: the interleaved samples' images
    assert data["image_mask"].sum(1).tolist() == [1] * 12 + [len(s.images) for s in samples[12:]]
    for row, sample in enumerate(samples):
        unsafe = data["unsafe_labels"][row]
        if UNSAFE_ANSWER in sample.meta:
            assert data["refusal"][row]
            assert tokenizer.decode(unsafe[unsafe != IGNORE_INDEX]) == sample.meta[UNSAFE_ANSWER]
        else:
            assert not data["refusal"][row] and (unsafe == IGNORE_INDEX).all()


def test_an_augmenting_encoder_changes_the_images_alike_for_the_same_draws_and_never_the_labels(collator):
    scene = shape_scene(0, 1)
    sample = Sample("s", "vqa", [ImageRef("png", encode_image(scene.image))],
                    conversations=[{"from": "human", "value": "<image>\nHow many shapes?"}, {"from": "gpt", "value": "2"}])
    plain = ConversationEncoder(collator)(sample, random.Random(0))
    config = AugmentConfig(color_jitter_p=1.0)
    once, again = (ConversationEncoder(collator, augment=config)(sample, random.Random(0)) for _ in range(2))
    other = ConversationEncoder(collator, augment=config)(sample, random.Random(1))
    assert once["input_ids"] == plain["input_ids"] and once["labels"] == plain["labels"]
    assert not torch.equal(once["pixels"], plain["pixels"]) and torch.equal(once["pixels"], again["pixels"])
    assert not torch.equal(once["pixels"], other["pixels"])
