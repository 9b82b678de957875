"""The Engine: the one generation path for evaluation, RL rollouts, the server and the apps.

A request is a chat (messages with `<image>` placeholders) plus its images. The
Engine renders the chat template, expands each placeholder into the model's visual
token slots and prefills the language model in two parts:

- the prompt up to its last image slot (the *image prefix*: the chat's opening and the
  images' visual tokens). Its key/value states come from a byte-bounded LRU cache keyed by
  its token ids and the images' pixel hashes; the batch's unseen prefixes are prefilled in
  one LM pass, their images' projected features coming from a second cache (keyed by pixel
  hash, as the article's engine does), the misses encoded in one vision pass;
- the rest of the prompt (the question), on top of those states.

A repeated image with the same chat opening (a second question about a photo) thus costs
neither the vision tower nor the LM's pass over its visual tokens. The batch is left-padded
and decodes with the KV cache; a row that finishes leaves the batch. Sampling is per request (greedy,
temperature, top-k, top-p, seed), and so are stop strings and token budgets. Short
questions take the article's fast path: a smaller token budget.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import torch
from PIL import Image
from transformers import DynamicCache, PreTrainedTokenizerBase
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from vlstack import checkpoint
from vlstack.data.collate import image_to_tensor
from vlstack.devices import resolve_device
from vlstack.errors import InputError
from vlstack.infer.cache import FeatureCache, image_key
from vlstack.infer.quantize import load_for_inference
from vlstack.models.language import decoder
from vlstack.models.tokenizer import IM_END, IMAGE, expand_image_placeholders, special_token_ids
from vlstack.models.vlm import QwenImageModel

T = TypeVar("T")


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0
    """0 decodes greedily; above 0 samples from the tempered distribution."""
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    """Generation ends before the first of these strings (which is not returned)."""
    seed: int = 0
    """Sampling seed, per request, so a sampled answer is reproducible."""


@dataclass
class Request:
    messages: list[dict[str, str]]
    """Chat messages ({"role": "system" | "user" | "assistant", "content": ...}); each `<image>` in
    the content is replaced by the next image's visual tokens."""
    images: list[Image.Image] = field(default_factory=list)
    params: SamplingParams = field(default_factory=SamplingParams)
    prompt_ids: list[int] | None = None
    """`Engine.prompt_ids(request)` computed ahead (a server tokenises off the Engine's thread); None: the
    Engine computes it."""
    cancel: threading.Event | None = None
    """Set it to end the request at the next decoding step (finish reason "cancelled")."""

    @classmethod
    def ask(cls, question: str, image: Image.Image | None = None, **params) -> Request:
        """A single-turn question about one image (or none)."""
        content = f"{IMAGE}\n{question}" if image is not None else question
        return cls([{"role": "user", "content": content}], [image] if image is not None else [],
                   SamplingParams(**params))


@dataclass
class Result:
    text: str
    token_ids: list[int]
    finish_reason: Literal["stop", "length", "cancelled"] | None
    """None only on the partial results a decode yields while the row is still going."""
    prompt_tokens: int


@dataclass
class EngineConfig:
    image_cache_bytes: int = 256 * 2**20
    """Budget of the image-feature cache (projected visual tokens by pixel hash); 0 disables it."""
    prefix_cache_bytes: int = 256 * 2**20
    """Budget of the image-prefix cache (the LM's key/value states of a prompt up to its last image);
    0 disables it."""
    max_batch_size: int = 8
    fast_path_chars: int = 15
    """Questions shorter than this many characters take the fast path (the article's rule)."""
    fast_path_max_new_tokens: int = 32
    """The token budget on the fast path (the article uses max_length=32); 0 disables the fast path."""
    precision: Literal["fp32", "bf16"] = "fp32"
    device: str = "auto"
    """Where `from_checkpoint` puts the model: auto (CUDA when a GPU is present, else cpu), cpu, cuda or
    cuda:N. An Engine built around a model object runs where that model's weights are."""
    vision_onnx: str | None = None
    """An ONNX file of the image path (`vlstack export-onnx`: vision tower + projector, fp32 or int8);
    images are then encoded by ONNX Runtime instead of PyTorch. Needs the [onnx] extra."""


@dataclass
class EngineStats:
    requests: int = 0
    generated_tokens: int = 0
    decode_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.decode_seconds if self.decode_seconds else 0.0


class Engine:
    def __init__(self, model: QwenImageModel, tokenizer: PreTrainedTokenizerBase, config: EngineConfig | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        self.cache = FeatureCache(self.config.image_cache_bytes)
        self.prefix_cache = FeatureCache(self.config.prefix_cache_bytes)
        self.stats = EngineStats()
        ids = special_token_ids(tokenizer)
        self._image_id = ids.image
        self._stop_ids = {ids.eos, tokenizer.convert_tokens_to_ids(IM_END)}
        self.device = next(model.parameters()).device
        self.encode_images: Callable[[torch.Tensor], torch.Tensor] = self._encode_with_model
        if self.config.vision_onnx:
            from vlstack.infer.onnx import OrtVisualEncoder  # the [onnx] extra, imported only when asked for

            self.encode_images = OrtVisualEncoder(self.config.vision_onnx, model)

    @classmethod
    def from_checkpoint(cls, directory: str | Path, config: EngineConfig | None = None) -> Engine:
        """Load a checkpoint directory (config.yaml, model.safetensors, tokenizer/), fp32 or int8."""
        directory, config = Path(directory), config or EngineConfig()
        model = load_for_inference(directory, device=resolve_device(config.device))
        return cls(model, checkpoint.load_checkpoint_tokenizer(directory), config)

    # --- public API ----------------------------------------------------------------------

    def generate(self, requests: list[Request]) -> list[Result]:
        """Complete every request; batches of up to `max_batch_size` decode together."""
        results: list[Result] = []
        size = self.config.max_batch_size
        for start in range(0, len(requests), size):
            results.extend(self._decode(requests[start : start + size]))
        return results

    def stream(self, request: Request) -> Generator[str, None, Result]:
        """Yield the answer's text as it is decoded; the pieces concatenate to `generate`'s text,
        and the generator returns the final Result (finish reason, token ids).

        With stop strings, the last few characters are held back until they cannot be the
        start of a stop string, so nothing is streamed that the final text does not contain.
        """
        hold = max((len(s) for s in request.params.stop), default=1) - 1
        sent = 0
        for results in self._decode_steps([request], live=True):
            result = results[0]
            finished = result.finish_reason is not None
            ready = len(result.text) if finished else max(sent, len(result.text) - hold)
            if ready > sent:
                yield result.text[sent:ready]
                sent = ready
        return result

    def clear_caches(self) -> None:
        """Forget every cached image feature and image prefix (the next request computes them anew)."""
        self.cache.clear()
        self.prefix_cache.clear()

    def visual_tokens(self, image: Image.Image) -> torch.Tensor:
        """The projected visual tokens [Nv, Dt] of one image, from the cache when seen before."""
        return self._visual_tokens_of([image])[0]

    def prompt_ids(self, request: Request, tokenizer: PreTrainedTokenizerBase | None = None) -> list[int]:
        """Chat template -> token ids with each `<image>` expanded into its visual-token slots. `tokenizer`: a
        copy of the Engine's own, to tokenise on another thread (a server does, so the Engine's thread
        never waits for a long prompt)."""
        tokenizer = tokenizer or self.tokenizer
        text = tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        placeholders = ids.count(self._image_id)
        if placeholders != len(request.images):
            raise InputError(f"the messages hold {placeholders} <image> placeholder(s) but {len(request.images)} "
                             "image(s) were given; put one <image> in the text for each image")
        expanded = expand_image_placeholders(ids, self._image_id, self.model.num_image_tokens())
        limit = self.model.config.language.max_positions
        if len(expanded) + request.params.max_new_tokens > limit:
            raise InputError(f"the prompt is {len(expanded)} tokens and asks for {request.params.max_new_tokens} "
                             f"more, over the model's {limit} positions; shorten it or lower max_new_tokens")
        return expanded

    # --- decoding ------------------------------------------------------------------------

    def _encode_with_model(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, S, S] -> projected visual tokens [B, Nv, Dt]."""
        return self.model.image_features(pixels)

    def _visual_tokens_of(self, images: list[Image.Image]) -> list[torch.Tensor]:
        """The projected visual tokens [Nv, Dt] of each image: seen ones from the cache, the rest in ONE
        vision pass (cheaper than one pass per image: larger matmuls, one Python walk), each distinct image once.

        The cache is asked once per distinct image, so its misses count the images encoded."""
        keys = [image_key(image) for image in images]
        found, missed = _look_up(self.cache, keys, images)
        if missed:
            vision = self.model.config.vision
            pixels = torch.stack([image_to_tensor(image, vision) for image in missed.values()]).to(self.device)
            with torch.no_grad(), self._autocast():
                encoded = self.encode_images(pixels).float()  # [B_miss, Nv, Dt]
            for key, tokens in zip(missed, encoded):
                found[key] = tokens.clone()  # its own storage, so the cache's byte count and eviction hold
                self.cache.put(key, found[key])
        return [found[key] for key in keys]

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16")

    def _budget(self, request: Request) -> int:
        cfg = self.config
        question = next((m["content"] for m in reversed(request.messages) if m["role"] == "user"), "")
        question = question.replace(IMAGE, "").strip()
        if cfg.fast_path_max_new_tokens and len(question) < cfg.fast_path_chars:
            return min(request.params.max_new_tokens, cfg.fast_path_max_new_tokens)
        return request.params.max_new_tokens

    def _decode(self, requests: list[Request]) -> list[Result]:
        *_, results = self._decode_steps(requests)  # the last step's results are the answers
        return results

    @torch.no_grad()
    def _decode_steps(self, requests: list[Request], live: bool = False) -> Iterator[list[Result]]:
        """Prefill, then one token per step for every unfinished row. Yields the results after every
        step when `live` (a stream reads the text as it grows), else once, at the end.

        A row that finishes leaves the batch (its KV-cache row, attention and position go), so rows
        that stop early cost no more compute while the others decode on."""
        started = time.perf_counter()
        prompts = [r.prompt_ids if r.prompt_ids is not None else self.prompt_ids(r) for r in requests]
        budgets = [self._budget(r) for r in requests]
        prefixes = [_image_prefix_length(ids, self._image_id) for ids in prompts]
        lm = self.model.language_model
        cache, prefix_mask = self._batch_cache(self._prefix_states(requests, prompts, prefixes))
        embeds, suffix_mask = self._left_padded_embeddings([ids[n:] for ids, n in zip(prompts, prefixes)])
        attention = torch.cat([prefix_mask, suffix_mask], dim=1)  # [B, P + S]: padding is 0, wherever it is
        positions = (attention.cumsum(dim=1) - 1).clamp(min=0)[:, prefix_mask.shape[1] :]  # [B, S]
        generators = [torch.Generator().manual_seed(r.params.seed) for r in requests]
        tokens: list[list[int]] = [[] for _ in requests]
        texts = ["" for _ in requests]
        finish: list[str | None] = [None for _ in requests]
        active = list(range(len(requests)))  # the request of each batch row still decoding
        with self._autocast():
            out = lm(inputs_embeds=embeds, attention_mask=attention, position_ids=positions, cache=cache,
                     use_cache=True, logits_to_keep=1)
        while True:
            picked = self._pick(out.logits[:, -1].float(), [requests[i].params for i in active],
                                [generators[i] for i in active])
            for token, i in zip(picked, active):
                if requests[i].cancel is not None and requests[i].cancel.is_set():
                    finish[i] = "cancelled"
                    continue
                finish[i], texts[i] = self._advance(token, tokens[i], requests[i], budgets[i], live)
            keep = [row for row, i in enumerate(active) if finish[i] is None]
            if live or not keep:
                yield self._results(prompts, tokens, texts, finish)
            if not keep:
                break
            if len(keep) < len(active):
                active = [active[row] for row in keep]
                cache.batch_select_indices(torch.tensor(keep, device=self.device))
                attention, positions = attention[keep], positions[keep]
            next_ids = torch.tensor([[tokens[i][-1]] for i in active], device=self.device)  # [len(active), 1]
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            with self._autocast():
                out = lm(input_ids=next_ids, attention_mask=attention, position_ids=positions, cache=cache,
                         use_cache=True)
        self.stats.requests += len(requests)
        self.stats.generated_tokens += sum(len(t) for t in tokens)
        self.stats.decode_seconds += time.perf_counter() - started

    def _advance(self, token: int, ids: list[int], request: Request, budget: int, live: bool
                 ) -> tuple[str | None, str]:
        """Append `token` to the row's `ids`; returns (finish reason or None, the text so far).

        The text is decoded only where it is read: at the end, and at every step of a live stream or
        a row with stop strings; elsewhere an unfinished row's text is "" (decoding the whole row at
        every step costs time quadratic in the answer's length)."""
        if token in self._stop_ids:
            return "stop", _settled(self.tokenizer.decode(ids, skip_special_tokens=True))
        ids.append(token)
        finished = len(ids) >= budget
        if not (finished or live or request.params.stop):
            return None, ""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in request.params.stop:
            if stop and stop in text:
                return "stop", text[: text.index(stop)]
        return ("length", text) if finished else (None, _settled(text))

    def _pick(self, logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]
              ) -> list[int]:
        """The next token of every row of `logits` [B, V]: the greedy rows' argmax and the sampled rows'
        distributions are computed on the device and read in one transfer each, so a decoding step reads the
        device once or twice, not once per row. Sampling draws on the CPU from each request's own generator,
        so a seeded answer is the same on any device."""
        picked = logits.argmax(dim=-1)  # [B]
        sampled = [row for row, p in enumerate(params) if p.temperature > 0]
        if sampled:
            distributions = torch.stack([self._distribution(logits[row], params[row]) for row in sampled]).cpu()
            draws = [torch.multinomial(distributions[n], 1, generator=generators[row]) for n, row in enumerate(sampled)]
            picked[sampled] = torch.cat(draws).to(picked.device)
        return picked.tolist()

    @staticmethod
    def _distribution(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
        """The probabilities to sample from: tempered, then cut to the top-k and the top-p."""
        scores = TemperatureLogitsWarper(params.temperature)(None, logits[None])
        if params.top_k > 0:
            scores = TopKLogitsWarper(params.top_k)(None, scores)
        if params.top_p < 1.0:
            scores = TopPLogitsWarper(params.top_p)(None, scores)
        return scores.softmax(dim=-1)[0]

    def _prefix_states(self, requests: list[Request], prompts: list[list[int]], prefixes: list[int]
                       ) -> list[torch.Tensor | None]:
        """Per request, the LM's key/value states of its image prefix (`prompts[i][:prefixes[i]]`):
        [layers, 2, kv_heads, P, head_dim], None without images. Seen prefixes come from the prefix cache
        (asked once per distinct prefix); the others are prefilled in ONE LM pass and cached."""
        keys = [_prefix_key(ids[:n], r.images) if n else None for r, ids, n in zip(requests, prompts, prefixes)]
        found, missed = _look_up(self.prefix_cache, keys,
                                 [(ids[:n], r.images) for r, ids, n in zip(requests, prompts, prefixes)])
        if missed:
            embeds, attention = self._left_padded_embeddings(*map(list, zip(*missed.values())))
            positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
            cache = DynamicCache(config=self.model.language_model.config)
            with self._autocast():
                decoder(self.model.language_model)(inputs_embeds=embeds, attention_mask=attention,
                                                   position_ids=positions, cache=cache, use_cache=True)
            for row, (key, (ids, _)) in enumerate(missed.items()):
                n = len(ids)  # stacking copies: the cached tensor has its own storage, as the cache counts it
                found[key] = torch.stack([torch.stack([layer.keys[row, :, -n:], layer.values[row, :, -n:]])
                                          for layer in cache.layers])
                self.prefix_cache.put(key, found[key])
        return [found[key] if key is not None else None for key in keys]

    def _batch_cache(self, states: list[torch.Tensor | None]) -> tuple[DynamicCache, torch.Tensor]:
        """Each row's prefix states, left-padded into one KV cache, and their attention mask [B, P]."""
        cache = DynamicCache(config=self.model.language_model.config)
        width = max((s.shape[3] for s in states if s is not None), default=0)
        mask = torch.zeros(len(states), width, dtype=torch.long, device=self.device)
        if width:
            first = next(s for s in states if s is not None)
            layers, _, heads, _, head_dim = first.shape
            kv = first.new_zeros(layers, 2, len(states), heads, width, head_dim)
            for row, state in enumerate(states):
                if state is not None:
                    kv[:, :, row, :, width - state.shape[3] :] = state
                    mask[row, width - state.shape[3] :] = 1
            for index in range(layers):
                cache.update(kv[index, 0], kv[index, 1], index)
        return cache, mask

    def _left_padded_embeddings(self, prompts: list[list[int]], images: list[list[Image.Image]] | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        """LM input embeddings [B, L, D] of token rows with each row's `images` at its `<image>` slots, and
        the attention mask [B, L]."""
        images = images or [[] for _ in prompts]
        embedding = self.model.language_model.get_input_embeddings()
        rows = []
        visual = iter(self._visual_tokens_of([image for row_images in images for image in row_images]))
        for ids, row_images in zip(prompts, images):
            ids_tensor = torch.tensor(ids, device=self.device)
            is_image = ids_tensor == self._image_id
            row = embedding(ids_tensor.masked_fill(is_image, 0))  # [L, D]
            if row_images:
                tokens = torch.cat([next(visual) for _ in row_images])  # [n * Nv, D]
                row = row.masked_scatter(is_image[:, None], tokens.to(row.dtype))
            rows.append(row)
        width = max(len(r) for r in rows)
        embeds = torch.zeros(len(rows), width, rows[0].shape[-1], dtype=rows[0].dtype, device=self.device)
        attention = torch.zeros(len(rows), width, dtype=torch.long, device=self.device)
        for i, row in enumerate(rows):
            embeds[i, width - len(row) :] = row
            attention[i, width - len(row) :] = 1
        return embeds, attention

    def _results(self, prompts, tokens, texts, finish) -> list[Result]:
        return [Result(text=texts[i], token_ids=list(tokens[i]), finish_reason=finish[i],
                       prompt_tokens=len(prompts[i])) for i in range(len(prompts))]


def _look_up(cache: FeatureCache, keys: list[str | None], items: list[T]
             ) -> tuple[dict[str, torch.Tensor], dict[str, T]]:
    """Ask `cache` once per distinct key (None: nothing to look up): (found key -> cached tensor, missed key ->
    its first item), so the cache's miss count is the number of distinct items to compute."""
    found: dict[str, torch.Tensor] = {}
    missed: dict[str, T] = {}
    for key, item in zip(keys, items):
        if key is not None and key not in found and key not in missed:
            cached = cache.get(key)
            if cached is None:
                missed[key] = item
            else:
                found[key] = cached
    return found, missed


def _image_prefix_length(ids: list[int], image_id: int) -> int:
    """Tokens up to and including the last `<image>` slot (0 without images). The chat template puts
    at least the assistant's opening after it, so the rest of the prompt is never empty."""
    return max((i + 1 for i, token in enumerate(ids) if token == image_id), default=0)


def _prefix_key(ids: list[int], images: list[Image.Image]) -> str:
    """Cache key of an image prefix: its token ids and its images' pixel hashes."""
    digest = hashlib.sha256(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
    for image in images:
        digest.update(image_key(image).encode())
    return digest.hexdigest()


def _settled(text: str) -> str:
    """`text` less a trailing incomplete multi-byte character (decoded as U+FFFD until its next byte comes)."""
    return text.removesuffix("\ufffd")
