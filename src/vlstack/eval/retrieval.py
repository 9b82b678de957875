"""Image -> text retrieval recall on held-out pairs, with its chance level.

Synthetic captions repeat (two scenes can show the same objects), so a retrieved
caption counts as correct when its text equals the query image's caption, and the
chance level is computed under the same rule.
"""

from __future__ import annotations

from collections import Counter

import torch


def image_to_text_recall(image_embeds: torch.Tensor, text_embeds: torch.Tensor, captions: list[str],
                         k: int = 1) -> dict[str, float]:
    """Recall@k of each image's true caption among all texts, and chance = E[#same caption / N].

    image_embeds, text_embeds: [N, E], L2-normalised, row i of each is a pair.
    """
    n = len(captions)
    similarity = image_embeds.float() @ text_embeds.float().t()  # [N, N]
    top = similarity.topk(min(k, n), dim=1).indices  # [N, k]
    hits = sum(any(captions[j] == captions[i] for j in top[i].tolist()) for i in range(n))
    counts = Counter(captions)
    chance = sum(min(1.0, k * counts[c] / n) for c in captions) / n
    return {f"r@{k}": hits / n, f"chance@{k}": chance}
