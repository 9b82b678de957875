"""Tokenizers: train a byte-level BPE from text, or load any local `transformers` tokenizer.

Byte-level BPE round-trips any UTF-8 text exactly (English, Chinese, emoji), so no
text is ever lost to an unknown token. Either way the tokenizer carries vlstack's
special tokens and a Qwen-style chat template (`<|im_start|>role ... <|im_end|>`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from vlstack.errors import CheckpointError

EOS = "<|endoftext|>"
PAD = "<|pad|>"
MASK = "<|mask|>"
IMAGE = "<image>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOS, PAD, MASK, IMAGE, IM_START, IM_END]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class SpecialTokenIds:
    eos: int
    pad: int
    mask: int
    image: int
    im_start: int
    im_end: int


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts`; the special tokens take the first ids."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, clean_up_tokenization_spaces=False)
    return _with_vlstack_tokens(tokenizer)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory (never a hub) and add any missing special tokens."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"tokenizer directory not found: {path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load a tokenizer from {path}: {exc}") from exc
    return _with_vlstack_tokens(tokenizer)


def _with_vlstack_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Register vlstack's special tokens (keeping a tokenizer's own eos/pad when it has them)."""
    if tokenizer.eos_token is None:
        tokenizer.eos_token = EOS
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD
    missing = [t for t in (MASK, IMAGE, IM_START, IM_END) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    tokenizer.mask_token = MASK
    tokenizer.padding_side = "right"
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> SpecialTokenIds:
    ids = tokenizer.convert_tokens_to_ids
    return SpecialTokenIds(
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
        mask=ids(MASK),
        image=ids(IMAGE),
        im_start=ids(IM_START),
        im_end=ids(IM_END),
    )


def expand_image_placeholders(ids: list[int], image_id: int, tokens_per_image: int) -> list[int]:
    """Replace each `<image>` id with `tokens_per_image` copies (one slot per visual token)."""
    expanded: list[int] = []
    for token in ids:
        expanded.extend([image_id] * tokens_per_image if token == image_id else [token])
    return expanded
