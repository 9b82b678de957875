import pytest

from vlstack.errors import CheckpointError
from vlstack.models.tokenizer import (
    IMAGE,
    SPECIAL_TOKENS,
    expand_image_placeholders,
    load_tokenizer,
    special_token_ids,
)

TEXTS = [
    "a red circle on the left and a blue square on the right",
    "左边是一个红色的圆形，右边是一个蓝色的正方形",
    "  spaces,\ttabs\nand newlines — «unicode» 😀 ¿qué?",
    "中英混排 mixed 文本 123.45%",
]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_is_exact(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_special_tokens_are_single_ids(tokenizer):
    ids = special_token_ids(tokenizer)
    assert len(set(vars(ids).values())) == len(SPECIAL_TOKENS)
    encoded = tokenizer(f"look {IMAGE} here", add_special_tokens=False)["input_ids"]
    assert encoded.count(ids.image) == 1


def test_chat_template_is_qwen_style(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_a_trained_tokenizer_reads_the_role_names_as_words(tokenizer):
    """The captions it was trained on never say "user" or "assistant"; each turn's header still takes 3 tokens."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    tail = tokenizer(prompt.split("<|im_end|>\n")[1], add_special_tokens=False)["input_ids"]
    assert [tokenizer.decode([i]) for i in tail] == ["<|im_start|>", "assistant", "\n"]
    assert tokenizer("user", add_special_tokens=False)["input_ids"] == [tokenizer.convert_tokens_to_ids("user")]


def test_save_and_load_a_local_tokenizer_directory(tokenizer, tmp_path):
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    loaded = load_tokenizer(tmp_path / "tok")
    assert special_token_ids(loaded) == special_token_ids(tokenizer)
    for text in TEXTS:
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_loading_a_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer directory not found"):
        load_tokenizer(tmp_path / "missing")


def test_expand_image_placeholders():
    assert expand_image_placeholders([5, 3, 6, 3], image_id=3, tokens_per_image=2) == [5, 3, 3, 6, 3, 3]
