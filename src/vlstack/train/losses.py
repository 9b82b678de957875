"""Pretraining losses (ITC, ITM, MLM, VTM, word alignment) and the masking / negative sampling they need.

Each loss takes tensors and returns a scalar; `objectives.py` runs the model to get
those tensors. References: CLIP (ITC), ALBEF (ITM with hard negatives mined from
ITC similarities), BERT (MLM 80/10/10), UNITER (masked region feature regression,
the ancestor of VTM).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather

MAX_LOGIT_SCALE = math.log(100.0)
"""CLIP's clamp: the temperature never drops below 0.01, which keeps the logits finite."""
IGNORE_INDEX = -100


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows of `x` concatenated (gradients flow back to each rank), and this rank's offset.

    Ranks may hold different numbers of rows (a streamed batch leaves out the samples it had to skip):
    each pads to the largest, and the padding is cut off again after the gather."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    rows = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, rows)
    sizes = [int(size) for size in sizes]
    padded = F.pad(x, (0, 0) * (x.dim() - 1) + (0, max(sizes) - x.shape[0]))
    parts = [part[:size] for part, size in zip(all_gather(padded), sizes)]
    return torch.cat(parts, dim=0), sum(sizes[: dist.get_rank()])


def itc_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
             hard_texts: torch.Tensor | None = None, has_hard: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over matching pairs (row i of each is a pair), negatives from every rank.

    image_embeds, text_embeds: [B, E], L2-normalised; logit_scale: log(1 / temperature). `hard_texts` [B, E]:
    each image's own extra negative text (NegCLIP's swapped caption), one more column of its image-to-text
    logits where `has_hard` [B] is True.
    """
    scale = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    all_images, offset = gather_with_grad(image_embeds)
    all_texts, _ = gather_with_grad(text_embeds)
    targets = torch.arange(image_embeds.shape[0], device=image_embeds.device) + offset
    image_to_text = scale * image_embeds @ all_texts.t()  # [B, B_global]
    if hard_texts is not None:
        hard = (scale * (image_embeds * hard_texts).sum(dim=-1)).masked_fill(~has_hard, float("-inf"))  # [B]
        image_to_text = torch.cat([image_to_text, hard[:, None]], dim=1)  # [B, B_global + 1]
    text_to_image = scale * text_embeds @ all_images.t()  # [B, B_global]
    return (F.cross_entropy(image_to_text, targets) + F.cross_entropy(text_to_image, targets)) / 2


def sample_hard_negatives(similarity: torch.Tensor, same: torch.Tensor, hard_fraction: float = 1.0,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """For each row, the column of a negative: with probability `hard_fraction` drawn from
    softmax(similarity) (ALBEF's hard negatives), otherwise uniformly.

    similarity: [B, B] ITC logits; same: [B, B] bool, True where a column is not a valid negative
    (the pair itself, or another sample with identical text/image). A row without any valid
    negative falls back to a uniform draw over the other columns.
    """
    valid = (~same).float()
    hard = similarity.detach().float().softmax(dim=1) * valid
    hard = hard / hard.sum(dim=1, keepdim=True).clamp(min=1e-12)
    uniform = valid / valid.sum(dim=1, keepdim=True).clamp(min=1)
    weights = hard_fraction * hard + (1 - hard_fraction) * uniform
    empty = valid.sum(dim=1) == 0
    if empty.any():
        others = (~torch.eye(len(weights), dtype=torch.bool, device=weights.device)).float()
        weights[empty] = others[empty]
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)  # [B]


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary matching: logits [N, 2], labels [N] with 1 = matching pair."""
    return F.cross_entropy(logits.float(), labels)


def random_subset(maskable: torch.Tensor, probability: float, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """Bool like `maskable`: each maskable position picked with `probability`, at least one per row
    (so no row contributes an empty target)."""
    maskable = maskable.bool()
    noise = torch.rand(maskable.shape, generator=generator, device=maskable.device)
    picked = (noise < probability) & maskable
    first = noise.masked_fill(~maskable, 2.0).argmin(dim=1, keepdim=True)  # the likeliest maskable position
    return picked.scatter(1, first, True) & maskable


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick `probability` of the maskable tokens; of those 80% -> mask, 10% -> random, 10% kept.

    Returns (masked ids, labels) with labels = IGNORE_INDEX where nothing is predicted.
    """
    picked = random_subset(maskable, probability, generator)
    labels = input_ids.masked_fill(~picked, IGNORE_INDEX)
    action = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=input_ids.device)
    masked = input_ids.clone()
    masked[picked & (action < 0.8)] = mask_id
    replace = picked & (action >= 0.8) & (action < 0.9)
    masked[replace] = random_ids[replace]
    return masked, labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over predicted positions. logits [..., V], labels [...] (IGNORE_INDEX = not predicted)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX)


def vtm_loss(predicted: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """MSE between predicted and target features at masked visual positions.

    Targets are layer-normalised (no affine), as in MAE's normalised-pixel targets,
    so the loss has the same scale whatever the vision tower's feature magnitudes.
    predicted, targets: [B, N, D]; masked: [B, N] bool.
    """
    targets = F.layer_norm(targets.float(), targets.shape[-1:])
    return F.mse_loss(predicted.float()[masked], targets[masked])


def word_alignment_loss(word_log_probs: torch.Tensor, ids: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Mean negative log-probability of each caption's words under its image's visual summary read as a word
    (the words share the summary's mass).

    word_log_probs: [B, V] (`models.words.word_log_probs`); ids, words: [B, T], the captions and which of their
    tokens count (`models.words.content_words`). An LM trained from scratch compares a question's word with the
    image only once the image arrives looking like words (RESULTS.md, session 15).
    """
    picked = word_log_probs.gather(1, ids)  # [B, T]
    return -(picked * words).sum() / words.sum().clamp(min=1)
