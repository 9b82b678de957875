"""Tokenizers: train a byte-level BPE from text, or load any local `transformers` tokenizer.

Byte-level BPE round-trips any UTF-8 text exactly (English, Chinese, emoji), so no
text is ever lost to an unknown token. Either way the tokenizer carries vlstack's
special tokens and a Qwen-style chat template (`<|im_start|>role ... <|im_end|>`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from vlstack.errors import CheckpointError, ConfigError
from vlstack.models.config import LanguageConfig

EOS = "<|endoftext|>"
PAD = "<|pad|>"
MASK = "<|mask|>"
IMAGE = "<image>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOS, PAD, MASK, IMAGE, IM_START, IM_END]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHAT_ROLES = ("user", "assistant")
"""The roles a conversation's turns take in `CHAT_TEMPLATE` (`data.collate.sample_messages` maps LLaVA's human / gpt)."""


@dataclass(frozen=True)
class SpecialTokenIds:
    eos: int
    pad: int
    mask: int
    image: int
    im_start: int
    im_end: int


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts`, each read as a chat turn (`CHAT_TEMPLATE`'s role name first), so
    that the role names are words; the special tokens take the first ids.

    The texts a from-scratch tokenizer is trained on never say "user" or "assistant", yet every prompt does:
    spelt in pieces, they put 9 tokens between a question and its answer where 5 suffice, and a tiny LM learned
    no lookup over that longer span (benchmarks/RESULTS.md, session 13)."""
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
    bpe.train_from_iterator((f"{CHAT_ROLES[i % 2]}\n{text}" for i, text in enumerate(texts)), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, clean_up_tokenization_spaces=False)
    return _with_vlstack_tokens(tokenizer)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory (never a hub) and add any missing special tokens."""
    return _with_vlstack_tokens(_load_plain(Path(path)))


def _load_plain(path: Path) -> PreTrainedTokenizerBase:
    if not path.is_dir():
        raise CheckpointError(f"tokenizer directory not found: {path}")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"{path} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the "
                              "tokenizer there with save_pretrained(), or name another directory with `tokenizer:`")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load a tokenizer from {path}: {exc}") from exc


def choose_tokenizer(path: str | None, language: LanguageConfig, texts: Callable[[], Iterable[str]]
                     ) -> PreTrainedTokenizerBase:
    """The tokenizer a new model starts with: the directory `path`; else a pretrained LM's own (and its chat
    template); else a byte-level BPE trained on `texts()` with the preset's vocabulary size."""
    if path:
        return load_tokenizer(path)
    if language.pretrained_path:
        return load_tokenizer(language.pretrained_path)
    return train_tokenizer(texts(), vocab_size=language.vocab_size)


def new_token_ids(tokenizer: PreTrainedTokenizerBase, language_dir: str | Path) -> list[int]:
    """The ids of `tokenizer` that the pretrained LM at `language_dir` never learned: those past its own
    tokenizer (vlstack's special tokens). A tokenizer whose ids disagree with the LM's own is a ConfigError;
    an LM saved without a tokenizer cannot tell, so nothing is new."""
    language_dir = Path(language_dir)
    if not any((language_dir / name).is_file() for name in TOKENIZER_FILES):
        return []
    own = _load_plain(language_dir)
    vocab = tokenizer.get_vocab()
    moved = [token for token, index in own.get_vocab().items() if vocab.get(token) != index]
    if moved:
        raise ConfigError(
            f"the tokenizer does not match the language model at {language_dir}: {len(moved)} of {len(own)} of its "
            f"tokens have other ids (e.g. {moved[0]!r}); use the LM's own tokenizer (leave `tokenizer` unset)")
    return list(range(len(own), len(tokenizer)))


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
