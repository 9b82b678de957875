"""Held-out image-text evaluation: retrieval recall and matching accuracy, with chance levels.

Synthetic captions repeat (two scenes can show the same objects), so a retrieved
caption counts as correct when its text equals the query image's caption, and the
chance level is computed under the same rule.
"""

from __future__ import annotations

from collections import Counter

import torch

from vlstack.models.vlm import QwenImageModel
from vlstack.models.words import content_words

Batch = dict[str, torch.Tensor]


def image_to_text_recall(image_embeds: torch.Tensor, text_embeds: torch.Tensor, captions: list[str],
                         k: int = 1) -> dict[str, float]:
    """Recall@k of each image's true caption among all texts, and its chance level.

    image_embeds, text_embeds: [N, E], L2-normalised, row i of each is a pair. Chance
    is exact for k = 1 (E[#same caption / N]) and the union bound min(1, k·m/N) above.
    """
    n = len(captions)
    similarity = image_embeds.float() @ text_embeds.float().t()  # [N, N]
    top = similarity.topk(min(k, n), dim=1).indices  # [N, k]
    hits = sum(any(captions[j] == captions[i] for j in top[i].tolist()) for i in range(n))
    counts = Counter(captions)
    chance = sum(min(1.0, k * counts[c] / n) for c in captions) / n
    return {f"r@{k}": hits / n, f"chance@{k}": chance}


@torch.no_grad()
def evaluate_pairs(model: QwenImageModel, data: Batch, captions: list[str], batch_size: int = 128,
                   seed: int = 0) -> dict[str, float]:
    """R@1 and R@5 (image -> text), ITM accuracy on each pair plus one mismatched caption, and word accuracy:
    how often the LM path's visual summary, read as a word (`models.words`), gives the words of
    its own caption a higher mean log-probability than those of the mismatched one.

    ITM and word-accuracy chance is 0.5: half of the judged pairs match.
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    n = len(captions)
    wrong = _mismatched_partners(captions, generator)  # [N]
    image_embeds, text_embeds, summary_words, correct = [], [], [], 0
    for start in range(0, n, batch_size):
        index = torch.arange(start, min(n, start + batch_size))
        out = model(data["pixel_values"][index], data["input_ids"][index], data["attention_mask"][index])
        image_embeds.append(out.image_embeds)
        summary_words.append(model.summary_words(out.image_tokens))
        text_embeds.append(out.text_embeds)
        correct += int((out.itm_logits.argmax(dim=1) == 1).sum())
        negative_mask = data["attention_mask"][wrong[index]]
        negative = model.itm(model.fuse(out.image_tokens, model.encode_text(data["input_ids"][wrong[index]],
                                                                             negative_mask), negative_mask))
        correct += int((negative.argmax(dim=1) == 0).sum())
    images, texts = torch.cat(image_embeds), torch.cat(text_embeds)
    return {**image_to_text_recall(images, texts, captions, k=1), **image_to_text_recall(images, texts, captions, k=5),
            "itm_accuracy": correct / (2 * n), "itm_chance": 0.5,
            "word_accuracy": word_accuracy(torch.cat(summary_words), data["input_ids"], data["attention_mask"], wrong)}


def word_accuracy(log_probs: torch.Tensor, ids: torch.Tensor, attention: torch.Tensor, wrong: torch.Tensor) -> float:
    """Share of images whose summary read as a word (`log_probs` [N, V]) scores its own caption's content words
    above those of caption `wrong[i]`; content words are counted over the whole held-out set (special tokens
    are in every caption)."""
    words = content_words(ids, attention, torch.empty(0, dtype=torch.long)).float()  # [N, T]

    def mean_log_prob(caption: torch.Tensor) -> torch.Tensor:  # [N]: image i's mean over caption[i]'s words
        return (log_probs.gather(1, ids[caption]) * words[caption]).sum(1) / words[caption].sum(1).clamp(min=1)

    return float((mean_log_prob(torch.arange(len(ids))) > mean_log_prob(wrong)).float().mean())


def _mismatched_partners(captions: list[str], generator: torch.Generator) -> torch.Tensor:
    """For each item, a random other item whose caption differs."""
    if len(set(captions)) < 2:
        raise ValueError("ITM evaluation needs at least two different captions")
    n = len(captions)
    partners = []
    for i in range(n):
        while True:
            j = int(torch.randint(n, (1,), generator=generator))
            if captions[j] != captions[i]:
                partners.append(j)
                break
    return torch.tensor(partners)
