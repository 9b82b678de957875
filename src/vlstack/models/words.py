"""The LM path's visual summary read as a word, and the caption words it is scored on.

Word alignment (`train.losses.word_alignment_loss`) trains the summary to name the caption's words in the LM's
own embedding space; `eval.retrieval.word_accuracy` checks it on held-out pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WORD_TEMPERATURE = 0.05
"""Of the cosines between a visual summary and the word embeddings (CLIP's and FILIP's learned value is near it)."""


def word_log_probs(visual: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
    """[B, D], [V, D] -> [B, V]: each visual summary read as a word, a log-distribution over the vocabulary."""
    cosines = F.normalize(visual.float(), dim=-1) @ F.normalize(word_embeddings.float(), dim=-1).t()  # [B, V]
    return (cosines / WORD_TEMPERATURE).log_softmax(dim=-1)


def content_words(ids: torch.Tensor, attention: torch.Tensor, special_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: the caption tokens worth naming from the image: real, not special, and in at most half of
    the batch's captions (its function words, "a", "the", "on", are in most of them, whatever the language)."""
    real = attention.bool() & ~torch.isin(ids, special_ids.to(ids.device))
    present = torch.zeros(ids.shape[0], int(ids.max()) + 1, dtype=torch.long, device=ids.device)
    present.scatter_reduce_(1, ids, real.long(), reduce="amax")  # [B, V]: caption b has token v
    common = present.float().mean(dim=0)[ids] > 0.5  # [B, T]
    return real & ~common
