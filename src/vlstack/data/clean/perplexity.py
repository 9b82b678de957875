"""Text perplexity under a reference language model: gibberish and garbled captions score high.

Three models behind one method, `perplexities(texts) -> list[float]`, each with
its own `default_limit`:
- `WordFrequencyLM`, the default: a unigram model over `wordfreq`'s English and
  Chinese frequency lists, so cleaning works out of the box with no reference
  corpus to supply.
- `NGramLM`: an interpolated Kneser–Ney n-gram model (Chen & Goodman, 1999, one
  absolute discount per order) trained in seconds on a reference corpus the user
  trusts. Units are words for space-separated scripts and single characters for
  Chinese/Japanese (which have no spaces), or characters throughout.
- `CausalLMPerplexity`: any local Hugging Face causal LM directory.

The article's limit of 150 is a word-level perplexity under a model of the data's
own domain; a unigram model over general text scores ordinary captions higher, so
its limit is its own (see `WordFrequencyLM`). Check the histogram in the cleaning
report whenever the model or the data changes.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import torch

from vlstack.data.clean.verdict import Verdict
from vlstack.errors import ConfigError

PERPLEXITY = "perplexity"

Unit = Literal["word", "char"]

BOS, EOS, UNK = "<s>", "</s>", "<unk>"

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana and Han ideographs: no spaces between words
_CJK_CHARACTER = re.compile(rf"[{_CJK}]")
_WORD_UNITS = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+|[^\w\s]|_")


class PerplexityModel(Protocol):
    default_limit: float
    """The perplexity over which a text is dropped when the config sets no `max_perplexity`."""

    def perplexities(self, texts: Sequence[str]) -> list[float]:
        """Per-text perplexity (inf for a text with nothing to score)."""
        ...


@dataclass
class PerplexityConfig:
    max_perplexity: float | None = None
    """Drop texts above this; None takes the model's `default_limit` (150, the article's value, for the n-gram
    and causal LM models; see `WordFrequencyLM` for the default model's)."""
    model_path: str | None = None
    """A local HF causal LM directory; None uses the n-gram model on a reference corpus, or without one the
    word-frequency model."""
    order: int = 3
    """n of the built-in n-gram model."""
    unit: Unit = "word"
    """Built-in model units: 'word' (characters for CJK) or 'char' (every character)."""
    open_vocab_size: int = 100_000
    """Distinct units the built-in model assumes the language has (see `NGramLM`)."""
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])
    """Word-frequency model: the `wordfreq` languages whose lists score the words."""


def build_perplexity_model(cfg: PerplexityConfig, reference_texts: Iterable[str] | None = None) -> PerplexityModel:
    """The HF model at `cfg.model_path`, an n-gram model trained on `reference_texts`, or without them
    the word-frequency model."""
    if cfg.model_path is not None:
        return CausalLMPerplexity(cfg.model_path)
    if reference_texts is None:
        return WordFrequencyLM(cfg.languages)
    return NGramLM.train(reference_texts, order=cfg.order, unit=cfg.unit, open_vocab_size=cfg.open_vocab_size)


def perplexity_limit(model: PerplexityModel, cfg: PerplexityConfig) -> float:
    """The configured `max_perplexity`, or the model's own limit."""
    return model.default_limit if cfg.max_perplexity is None else cfg.max_perplexity


def check_perplexity(
    texts: Sequence[str], model: PerplexityModel, cfg: PerplexityConfig | None = None
) -> list[Verdict]:
    limit = perplexity_limit(model, cfg or PerplexityConfig())
    return [
        Verdict(score=ppl, reason=PERPLEXITY if not ppl <= limit else None)  # NaN and inf drop too
        for ppl in model.perplexities(texts)
    ]


def tokenize(text: str, unit: Unit) -> list[str]:
    """Lower-cased units: words, CJK characters and punctuation marks ('word'), or characters ('char')."""
    text = text.lower()
    if unit == "char":
        return list(" ".join(text.split()))
    return _WORD_UNITS.findall(text)


class WordFrequencyLM:
    """Unigram perplexity under `wordfreq`'s frequency lists: the default model, needing no reference corpus.

    Units are `tokenize(text, "word")`'s. A CJK character gets its frequency in the Chinese list (the
    words' frequencies spread over their characters), any other word the highest frequency one of the
    other languages gives it (numbers as the lists store them: digits as 0); punctuation is not scored,
    and a unit no list holds gets `floor`, below every listed word. A unigram model judges the words,
    not their order: gibberish and garbled words score far above `default_limit`, a shuffled sentence
    of real words does not (the n-gram model on a trusted reference judges order too).
    """

    default_limit = 20_000.0
    """Measured on written captions and on the corpus generator's gibberish (benchmarks/clean_quality.py):
    ordinary English and Chinese captions score ~300-5,000, gibberish over 10^6."""

    def __init__(self, languages: Sequence[str] = ("en", "zh"), floor: float = 1e-9):
        try:
            from wordfreq import get_frequency_dict
        except ImportError as error:
            raise ConfigError("the default perplexity model needs wordfreq: pip install wordfreq") from error
        self.floor = floor
        self.words: dict[str, float] = {}
        self.characters: dict[str, float] = {}
        for language in languages:
            try:
                frequencies = get_frequency_dict(language, "best")
            except (LookupError, OSError) as error:
                raise ConfigError(f"'perplexity.languages': wordfreq has no list for {language!r} ({error})") from None
            if language.startswith("zh"):
                self.characters = _character_frequencies(frequencies)
            else:
                for word, frequency in frequencies.items():
                    self.words[word] = max(frequency, self.words.get(word, 0.0))

    def perplexities(self, texts: Sequence[str]) -> list[float]:
        return [self.perplexity(text) for text in texts]

    def perplexity(self, text: str) -> float:
        log_probs = [math.log(self._frequency(unit)) for unit in tokenize(text, "word") if unit[0].isalnum()]
        return math.exp(-sum(log_probs) / len(log_probs)) if log_probs else math.inf

    def _frequency(self, unit: str) -> float:
        table = self.characters if _CJK_CHARACTER.fullmatch(unit) else self.words
        found = table.get(unit) or table.get(re.sub(r"\d", "0", unit))
        return max(found or self.floor, self.floor)


def _character_frequencies(word_frequencies: dict[str, float]) -> dict[str, float]:
    """Unigram character frequencies of a language without spaces, from its word frequencies."""
    counts: Counter[str] = Counter()
    for word, frequency in word_frequencies.items():
        for character in word:
            counts[character] += frequency
    total = sum(counts.values())
    return {character: count / total for character, count in counts.items()}


class NGramLM:
    """Interpolated Kneser–Ney n-gram language model.

    P(w | h) = max(c(h w) - D, 0) / c(h)  +  D * N1+(h •) / c(h) * P(w | h')

    with raw counts c at the highest order and continuation counts (the number of
    distinct words seen before an n-gram) below it, h' the context h without its
    first word, and the unigram level interpolated with the uniform distribution
    over the vocabulary.

    Units never seen in training share `<unk>`, which only that uniform floor
    gives mass to, and the vocabulary is open: `<unk>` stands for every one of the
    `open_vocab_size - |seen|` units the corpus lacks, so one specific unseen
    unit has P(<unk> | h) / (open_vocab_size - |seen|). Without this share,
    gibberish would be capped near the perplexity of a uniform guess over the
    reference vocabulary (~160 for a 40-word corpus), not far above the limit.
    """

    default_limit = 150.0
    """The article's limit for a word-level model of the data's domain."""

    def __init__(
        self, order: int, unit: Unit, ngram_counts: Counter[tuple[str, ...]], open_vocab_size: int = 100_000
    ):
        if order < 1:
            raise ConfigError(f"n-gram order must be at least 1, got {order}")
        self.order, self.unit = order, unit
        self.counts: dict[int, Counter[tuple[str, ...]]] = {order: ngram_counts}
        for k in range(order - 1, 0, -1):
            # continuation count of a k-gram: distinct words seen before it
            self.counts[k] = Counter(gram[1:] for gram in self.counts[k + 1])
        self.context_total: dict[int, Counter[tuple[str, ...]]] = {}
        self.context_types: dict[int, Counter[tuple[str, ...]]] = {}
        self.discount: dict[int, float] = {}
        for k, counts in self.counts.items():
            totals, types = Counter(), Counter()
            for gram, count in counts.items():
                totals[gram[:-1]] += count
                types[gram[:-1]] += 1
            self.context_total[k], self.context_types[k] = totals, types
            self.discount[k] = _discount(counts)
        self.vocab = sorted({gram[-1] for gram in self.counts[1]} | {UNK})
        self._known = frozenset(self.vocab)
        self._unseen_types = max(1, open_vocab_size - (len(self.vocab) - 2))  # minus </s> and <unk>

    @classmethod
    def train(
        cls, texts: Iterable[str], order: int = 3, unit: Unit = "word", open_vocab_size: int = 100_000
    ) -> NGramLM:
        counts: Counter[tuple[str, ...]] = Counter()
        for text in texts:
            units = [BOS] * (order - 1) + tokenize(text, unit) + [EOS]
            counts.update(tuple(units[i - order + 1 : i + 1]) for i in range(order - 1, len(units)))
        if not counts:
            raise ConfigError("the n-gram model needs a non-empty reference corpus")
        return cls(order, unit, counts, open_vocab_size)

    def prob(self, word: str, context: Sequence[str]) -> float:
        """P(word | the last order-1 units of context). Over `vocab` it sums to 1, `<unk>` being
        the total for all unseen units; an unseen `word` gets its share of that."""
        history = [BOS] * (self.order - 1) + [self._known_or_unk(u) for u in context]
        return self._unit_prob(word, tuple(history[len(history) - self.order + 1 :]))

    def perplexity(self, text: str) -> float:
        units = tokenize(text, self.unit) + [EOS]
        if len(units) == 1:
            return math.inf
        history = [BOS] * (self.order - 1) + [self._known_or_unk(u) for u in units]
        n = self.order - 1
        log_prob = sum(math.log(self._unit_prob(u, tuple(history[i : i + n]))) for i, u in enumerate(units))
        return math.exp(-log_prob / len(units))

    def perplexities(self, texts: Sequence[str]) -> list[float]:
        return [self.perplexity(text) for text in texts]

    def _known_or_unk(self, unit: str) -> str:
        return unit if unit in self._known else UNK

    def _unit_prob(self, unit: str, context: tuple[str, ...]) -> float:
        if unit in self._known:
            return self._prob(unit, context)
        return self._prob(UNK, context) / self._unseen_types

    def _prob(self, word: str, context: tuple[str, ...]) -> float:
        k = len(context) + 1
        lower = 1.0 / len(self.vocab) if k == 1 else self._prob(word, context[1:])
        total = self.context_total[k][context]
        if total == 0:
            return lower
        d = self.discount[k]
        count = self.counts[k][context + (word,)]
        return (max(count - d, 0.0) + d * self.context_types[k][context] * lower) / total


def _discount(counts: Counter[tuple[str, ...]]) -> float:
    """D = n1 / (n1 + 2 n2) from the counts-of-counts (Ney et al.); 0.5 when they are degenerate."""
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    return n1 / (n1 + 2 * n2) if n1 and n2 else 0.5


class CausalLMPerplexity:
    """Perplexity under any local HF causal LM directory (`AutoModelForCausalLM`, no download)."""

    default_limit = 150.0

    def __init__(self, path: str | Path, batch_size: int = 8, max_length: int = 512, device: str = "cpu"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not Path(path).is_dir():
            raise ConfigError(f"perplexity model_path {str(path)!r} is not a directory holding a causal LM")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).to(device).eval()
        self.batch_size, self.max_length, self.device = batch_size, max_length, device
        # the token every text is scored after, so its first real token is predicted too
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        self.start_id = bos if bos is not None else eos

    @torch.inference_mode()
    def perplexities(self, texts: Sequence[str]) -> list[float]:
        result: list[float] = []
        for begin in range(0, len(texts), self.batch_size):
            result.extend(self._batch(texts[begin : begin + self.batch_size]))
        return result

    def _batch(self, texts: Sequence[str]) -> list[float]:
        prefix = [] if self.start_id is None else [self.start_id]
        ids = [(prefix + self.tokenizer(t, add_special_tokens=False)["input_ids"])[: self.max_length] for t in texts]
        width = max(len(seq) for seq in ids)
        input_ids = torch.zeros((len(ids), width), dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        logits = self.model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()  # [B, T-1, V]
        log_probs = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None])[..., 0]  # [B, T-1]
        scored = mask[:, 1:].float()
        nll = -(log_probs * scored).sum(dim=1)
        n = scored.sum(dim=1)
        return [math.exp(total / count) if count > 0 else math.inf for total, count in zip(nll.tolist(), n.tolist())]
