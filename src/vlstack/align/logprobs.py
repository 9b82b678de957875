"""Log-probabilities of response tokens given an image and a prompt: the one scoring path of alignment.

The reward model, DPO, PPO and GRPO all score (image, prompt, response) sequences the same way. The
prompt is rendered exactly as the Engine renders it for generation (chat template, `<image>` expanded
into the model's visual-token slots), the response follows it, and the language model's next-token
distribution at each position gives log p(response token | image, prompt, earlier response tokens).
A sampled rollout, scored here, therefore gets the probabilities the Engine sampled it from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vlstack.data.collate import image_to_tensor
from vlstack.errors import ConfigError, InputError
from vlstack.infer.engine import Engine, EngineConfig, Request
from vlstack.models.language import decoder
from vlstack.models.tokenizer import IM_END
from vlstack.models.vlm import QwenImageModel

Batch = dict[str, torch.Tensor]


def load_engine(directory: str | Path | None, device: str | torch.device = "auto") -> Engine:
    """An Engine around a checkpoint (the policy and its prompt renderer) on `device`, with no image-feature or
    prefix cache: alignment changes the weights, so cached visual tokens or key/value states would go stale."""
    if not directory:
        raise ConfigError("alignment starts from a checkpoint: set checkpoint=DIR (a directory with config.yaml, "
                          "model.safetensors and tokenizer/, e.g. the SFT stage's output)")
    return Engine.from_checkpoint(directory, EngineConfig(image_cache_bytes=0, prefix_cache_bytes=0, max_batch_size=64,
                                                          device=str(device)))


def trained_engine(engine: Engine, checkpoint: Path, sharded: bool) -> Engine:
    """The Engine around the trained policy, on the main rank: `engine` itself, or where ranks hold only shards
    (`ParallelConfig.shards_weights`) one around the consolidated weights the run's `checkpoint` holds."""
    return load_engine(checkpoint, engine.device) if sharded else engine


def response_ids(engine: Engine, text: str) -> list[int]:
    """Token ids of an assistant answer as the model should emit it: the text, then `<|im_end|>`."""
    tokenizer = engine.tokenizer
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids(IM_END)]


def pack_sequences(prompts: Sequence[list[int]], responses: Sequence[list[int]], pad_id: int) -> Batch:
    """Prompt + response rows, right-padded: `input_ids`, `attention_mask`, `response_mask` [N, T]."""
    if len(prompts) != len(responses):
        raise InputError(f"{len(prompts)} prompts but {len(responses)} responses; give one response per prompt")
    empty = [i for i, r in enumerate(responses) if not r]
    if empty:
        raise InputError(f"response {empty[0]} has no tokens ({len(empty)} empty); nothing would be scored")
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # [N, T]
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)  # [N, T]
    response_mask = torch.zeros((len(prompts), width), dtype=torch.long)  # [N, T]
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        end = len(prompt) + len(response)
        input_ids[row, :end] = torch.tensor(prompt + response)
        attention_mask[row, :end] = 1
        response_mask[row, len(prompt) : end] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def encode_responses(engine: Engine, requests: Sequence[Request], responses: Sequence[list[int]]) -> Batch:
    """(prompt, response ids) pairs -> a scoring batch: `pixel_values` [N, 3, S, S] (each prompt has one
    image) and the packed sequences of `pack_sequences`, each prompt rendered by the Engine."""
    several = [i for i, r in enumerate(requests) if len(r.images) != 1]
    if several:
        raise InputError(f"request {several[0]} has {len(requests[several[0]].images)} images; alignment batches "
                         "hold exactly one image per prompt")
    prompts = [engine.prompt_ids(request) for request in requests]
    pixels = torch.stack([image_to_tensor(r.images[0], engine.model.config.vision) for r in requests])  # [N, 3, S, S]
    return {"pixel_values": pixels, **pack_sequences(prompts, responses, engine.tokenizer.pad_token_id)}


def on_model_device(batch: Batch, model: nn.Module) -> Batch:
    """`batch` where `model`'s weights are (the Trainer's batches are there already; rollouts and pairs are
    encoded on the CPU)."""
    device = next(model.parameters()).device
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def lm_hidden(model: QwenImageModel, batch: Batch) -> torch.Tensor:
    """The language model's last hidden states [B, T, D] over right-padded image + text rows."""
    embeds = model.embed_inputs(batch["input_ids"], batch["pixel_values"])  # [B, T, D]
    return decoder(model.language_model)(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).last_hidden_state


@dataclass
class ResponseScores:
    """Per-token scores, aligned with the *predicted* token: position t scores `input_ids[:, t + 1]`."""

    logprobs: torch.Tensor  # [B, T - 1] log p(token t+1 | tokens <= t); 0 where mask is 0
    mask: torch.Tensor  # [B, T - 1] float: 1 where token t+1 is a response token
    hidden: torch.Tensor  # [B, T - 1, D] the hidden state that predicts token t+1
    entropy: torch.Tensor | None = None  # [B, T - 1] entropy of the next-token distribution; 0 off the mask

    def sequence_logprobs(self) -> torch.Tensor:
        """log p(response | image, prompt) per row [B]: the sum over its tokens."""
        return (self.logprobs * self.mask).sum(dim=1)


def score_responses(model: QwenImageModel, batch: Batch, with_entropy: bool = False) -> ResponseScores:
    """Log-probabilities of the response tokens of `batch` (keys of `encode_responses`) under `model`.

    Only response positions go through the vocabulary head, so long prompts cost no [T, V] logits.
    """
    batch = on_model_device(batch, model)
    hidden = lm_hidden(model, batch)[:, :-1]  # [B, T - 1, D]
    targets = batch["input_ids"][:, 1:]  # [B, T - 1]
    mask = batch["response_mask"][:, 1:].bool()  # [B, T - 1]
    logits = model.language_model.get_output_embeddings()(hidden[mask]).float()  # [n, V]
    log_softmax = logits.log_softmax(dim=-1)  # [n, V]
    logprobs = torch.zeros(targets.shape, dtype=log_softmax.dtype, device=hidden.device)
    logprobs[mask] = log_softmax.gather(-1, targets[mask][:, None]).squeeze(-1)
    entropy = None
    if with_entropy:
        entropy = torch.zeros_like(logprobs)
        entropy[mask] = -(log_softmax.exp() * log_softmax).sum(dim=-1)
    return ResponseScores(logprobs=logprobs, mask=mask.to(logprobs.dtype), hidden=hidden, entropy=entropy)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is 1 (a token-level mean over a whole batch)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)
