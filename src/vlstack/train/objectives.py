"""Objectives: `loss(model, batch) -> (loss, metrics)`, the only thing the Trainer calls. The metrics are
detached tensors: the Trainer reads them from the device at log steps only."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlstack.collectives import global_mean, global_weighted_mean
from vlstack.errors import DataError
from vlstack.models.language import decoder
from vlstack.models.vlm import QwenImageModel
from vlstack.models.words import content_words
from vlstack.train.losses import (
    IGNORE_INDEX,
    itc_loss,
    itm_loss,
    mask_tokens,
    mlm_loss,
    random_subset,
    sample_hard_negatives,
    vtm_loss,
    word_alignment_loss,
)

Batch = dict[str, torch.Tensor]
Metrics = dict[str, torch.Tensor]
"""Detached 0-d tensors, named."""


def itc_objective(model: QwenImageModel, batch: Batch) -> tuple[torch.Tensor, Metrics]:
    """Image-text contrastive learning on matching pairs (no fusion pass needed)."""
    out = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], fuse=False)
    loss = itc_loss(out.image_embeds, out.text_embeds, model.itc.logit_scale)
    return loss, {"itc": loss.detach(), "temperature": model.itc.temperature.detach()}


@dataclass
class PretrainLossConfig:
    """Weights of the mixed pretraining loss (the article: 0.4 ITC + 0.3 ITM + 0.2 MLM + 0.1 VTM) and masking rates."""

    itc: float = 0.4
    itm: float = 0.3
    mlm: float = 0.2
    vtm: float = 0.1
    word_align: float = 0.0
    """vlstack's fifth term, not the article's (`losses.word_alignment_loss`): the LM path's visual summary is
    trained to name the caption's words in the LM's own embedding space. Pretraining otherwise never trains the
    projector, and an LM trained from scratch then never learns to compare a question's word with the image: on
    the tiny preset, existence questions ("is there a red circle?") stayed at chance for 1,000 fine-tuning steps
    without alignment and reached 0.77 held out in 800 with it running alongside; aligned beforehand only, as
    this term does, the comparison did not form (RESULTS.md, session 15)."""
    mlm_probability: float = 0.15
    """Share of text tokens picked for MLM (of those: 80% masked, 10% random, 10% kept)."""
    vtm_probability: float = 0.15
    """Share of patch tokens hidden from the fusion encoder for VTM."""
    itm_hard_fraction: float = 0.5
    """Share of ITM negatives mined from ITC similarities (the rest are uniform). Trained from
    scratch, all-hard negatives stall ITM at the class prior: on the tiny preset, 0.50 held-out
    accuracy after 300 steps, where a half-and-half mix learns."""


class PretrainObjective:
    """The mixed ITC + ITM + MLM + VTM (+ word alignment) loss on a batch of matching (image, text) pairs.

    One vision pass serves all the losses. ITM fuses each pair plus one hard negative
    text per image and one hard negative image per text, drawn from the ITC similarities
    (ALBEF). MLM and VTM share one fusion pass over masked text and partly hidden
    patches; VTM regresses the vision tower's own (detached) features of the hidden
    patches, as UNITER regresses the detector features of masked regions.
    Random draws use torch's global generator, which the Trainer seeds and checkpoints.
    """

    def __init__(self, config: PretrainLossConfig, mask_token_id: int, special_token_ids: list[int]):
        self.config = config
        self.mask_token_id = mask_token_id
        self.special_token_ids = torch.tensor(sorted(set(special_token_ids)))

    def __call__(self, model: QwenImageModel, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        cfg = self.config
        pixels, ids, attention = batch["pixel_values"], batch["input_ids"], batch["attention_mask"]
        image_tokens = model.encode_image(pixels)  # [B, Nv, Dv]
        text_hidden = model.encode_text(ids, attention)  # [B, T, Dt]
        image_embeds = model.image_embedding(image_tokens)
        text_embeds = model.text_embedding(text_hidden, attention)
        swapped = None
        if "negative_ids" in batch:  # each caption with one word swapped for a contradicting one (NegCLIP)
            swapped = Swapped(batch["negative_ids"], batch["negative_attention_mask"], batch["has_negative"].bool())
            swapped.hidden = model.encode_text(swapped.ids, swapped.attention)  # [B, T', Dt]
            swapped.embeds = model.text_embedding(swapped.hidden, swapped.attention)  # [B, E]
        losses = {"itc": itc_loss(image_embeds, text_embeds, model.itc.logit_scale,
                                  *((swapped.embeds, swapped.valid) if swapped is not None else ()))}
        metrics: dict[str, torch.Tensor] = {}

        if cfg.itm > 0:
            similarity = model.itc.logit_scale.exp() * image_embeds @ text_embeds.t()  # [B, B] ITC logits
            losses["itm"], metrics["itm_acc"] = self._itm(model, image_tokens, text_hidden, attention, similarity, ids,
                                                          swapped)
        if cfg.mlm > 0 or cfg.vtm > 0:
            mlm, vtm, metrics["mlm_acc"] = self._masked_modelling(model, image_tokens, ids, attention)
            losses["mlm"], losses["vtm"] = mlm, vtm

        if cfg.word_align > 0:
            words = content_words(ids, attention, self.special_token_ids)
            losses["word_align"] = word_alignment_loss(model.summary_words(image_tokens), ids, words)

        weights = {"itc": cfg.itc, "itm": cfg.itm, "mlm": cfg.mlm, "vtm": cfg.vtm, "word_align": cfg.word_align}
        total = sum(weights[name] * value for name, value in losses.items())
        metrics.update({name: value.detach() for name, value in losses.items()})
        metrics["temperature"] = model.itc.temperature.detach()
        return total, metrics

    def _itm(self, model, image_tokens, text_hidden, attention, similarity, ids, swapped: Swapped | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        B = ids.shape[0]
        same_text = _same_rows(ids.masked_fill(attention == 0, -1))  # identical captions are not negatives
        hard = self.config.itm_hard_fraction
        negative_text = sample_hard_negatives(similarity, same_text, hard)  # [B]
        negative_image = sample_hard_negatives(similarity.t(), same_text, hard)  # [B]
        wrong_hidden, wrong_attention = text_hidden[negative_text], attention[negative_text]  # [B, T, Dt], [B, T]
        if swapped is not None:  # an image's own swapped caption is its hardest negative text
            width = max(wrong_hidden.shape[1], swapped.hidden.shape[1])
            text_hidden, attention = _widen(text_hidden, width), _widen(attention, width)
            keep = swapped.valid[:, None]
            wrong_attention = torch.where(keep, _widen(swapped.attention, width), _widen(wrong_attention, width))
            wrong_hidden = torch.where(keep[..., None], _widen(swapped.hidden, width), _widen(wrong_hidden, width))
        fused = model.fuse(
            torch.cat([image_tokens, image_tokens, image_tokens[negative_image]]),
            torch.cat([text_hidden, wrong_hidden, text_hidden]),
            torch.cat([attention, wrong_attention, attention]),
        )  # [3B, Nv + T, W]: positives, (image, hard or swapped text), (hard image, text)
        logits = model.itm(fused)  # [3B, 2]
        labels = torch.cat([torch.ones(B), torch.zeros(2 * B)]).long().to(logits.device)
        accuracy = (logits.argmax(dim=1) == labels).float().mean().detach()
        return itm_loss(logits, labels), accuracy

    def _masked_modelling(self, model, image_tokens, ids, attention) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        maskable_text = attention.bool() & ~torch.isin(ids, self.special_token_ids.to(ids.device))
        masked_ids, labels = mask_tokens(ids, maskable_text, self.mask_token_id, model.config.language.vocab_size,
                                         self.config.mlm_probability)
        masked_hidden = model.encode_text(masked_ids, attention)
        n_prompts, n_visual = model.config.vision.num_prompts, image_tokens.shape[1]
        patches = torch.zeros(image_tokens.shape[:2], dtype=torch.bool, device=ids.device)
        patches[:, n_prompts:] = True
        hidden_patches = random_subset(patches, self.config.vtm_probability)  # [B, Nv]
        fused = model.fuse(image_tokens, masked_hidden, attention, visual_mask=hidden_patches)
        picked = labels != IGNORE_INDEX
        embedding = model.language_model.get_input_embeddings().weight
        logits = model.mlm(fused[:, n_visual:][picked], embedding)  # [n_picked, V]
        accuracy = (logits.argmax(dim=-1) == labels[picked]).float().mean().detach()
        vtm = vtm_loss(model.vtm(fused[:, :n_visual]), image_tokens.detach(), hidden_patches)
        return mlm_loss(logits, labels[picked]), vtm, accuracy


@dataclass
class Swapped:
    """The batch's swap negatives (`vlstack.data.negatives`): token ids and mask [B, T'], which rows have one
    [B], and once encoded their hidden states [B, T', Dt] and ITC embeddings [B, E]."""

    ids: torch.Tensor
    attention: torch.Tensor
    valid: torch.Tensor
    hidden: torch.Tensor | None = None
    embeds: torch.Tensor | None = None


def _widen(x: torch.Tensor, width: int) -> torch.Tensor:
    """Right-pad the sequence dimension (dim 1) of `x` with zeros to `width`."""
    return F.pad(x, (0, 0) * (x.dim() - 2) + (0, width - x.shape[1]))


def _same_rows(rows: torch.Tensor) -> torch.Tensor:
    """[B, B] bool: True where rows i and j are identical (the diagonal included)."""
    return (rows[:, None, :] == rows[None, :, :]).all(dim=-1)


# --- instruction tuning: next-token loss on the assistant's tokens ---------------------------------


def supervised_logits(model: QwenImageModel, batch: dict[str, torch.Tensor], prefix: str = ""
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LM logits [n, V] (fp32) at the positions that predict a labelled token, those labels [n], and the
    batch row of each [n].

    Reads `{prefix}input_ids`, `{prefix}attention_mask`, `{prefix}labels` [B, T] (right-padded, as
    `vlstack.data.conversations.encode_conversations` writes them) and the images `pixel_values`
    [B, K, 3, S, S] with `image_mask` [B, K], which fill the `<image>` slots. Rows without a label
    are left out and the batch is cut to its longest row, so no compute goes to padding. Only the
    picked positions go through the vocabulary head.
    """
    labels = batch[prefix + "labels"]
    rows = (labels != IGNORE_INDEX).any(dim=1)  # [B]
    if not rows.any():
        raise DataError(f"a batch has no supervised token in '{prefix}labels': nothing to learn from (check the "
                        "chat template and the assistant turns; the collator should have left such samples out)")
    attention = batch[prefix + "attention_mask"][rows]
    width = int(attention.sum(dim=1).max())
    ids, attention, labels = batch[prefix + "input_ids"][rows, :width], attention[:, :width], labels[rows, :width]
    pixels = batch["pixel_values"][rows][batch["image_mask"][rows]]  # [N_img, 3, S, S] in placeholder order
    embeds = model.embed_inputs(ids, pixels if len(pixels) else None)  # [b, T, D]
    hidden = decoder(model.language_model)(inputs_embeds=embeds, attention_mask=attention).last_hidden_state
    targets = labels[:, 1:]  # the token at t + 1 is predicted at position t
    picked = targets != IGNORE_INDEX  # [b, T - 1]
    logits = model.language_model.get_output_embeddings()(hidden[:, :-1][picked])  # [n, V]
    row_of = rows.nonzero()[:, 0][picked.nonzero()[:, 0]]  # [n]
    return logits.float(), targets[picked], row_of


def sft_objective(model: QwenImageModel, batch: Batch) -> tuple[torch.Tensor, Metrics]:
    """Supervised fine-tuning: mean cross-entropy over the assistant's tokens (of the global batch: ranks hold
    different numbers of them)."""
    logits, targets, _ = supervised_logits(model, batch)
    tokens = torch.tensor(float(len(targets)), device=logits.device)
    loss = global_mean(F.cross_entropy(logits, targets, reduction="sum"), tokens)
    return loss, {"token_acc": (logits.argmax(dim=-1) == targets).float().mean().detach()}


def unlikelihood_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of -log(1 - p(target)) over tokens (Welleck et al. 2019): pushes each target token down."""
    log_p = logits.log_softmax(dim=-1).gather(1, targets[:, None])[:, 0]  # [n]
    return -torch.log1p(-log_p.exp().clamp(max=1 - 1e-6)).mean()


@dataclass
class SafetyLossConfig:
    """The safety stage's loss: SFT with refusals up-weighted, plus unlikelihood on unsafe continuations."""

    refusal_weight: float = 2.0
    """Weight of each token of a refusal answer, against 1 for every other answer token."""
    unlikelihood: float = 1.0
    """Weight of the unlikelihood term on the compliant answers harmful requests must not get (0: off)."""


class SafetyObjective:
    """Weighted SFT cross-entropy (refusal rows count `refusal_weight` times) + `unlikelihood` x the
    unlikelihood of each harmful request's unsafe continuation (`unsafe_*` tensors, `refusal` flags)."""

    def __init__(self, config: SafetyLossConfig):
        self.config = config

    def __call__(self, model: QwenImageModel, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        cfg = self.config
        logits, targets, rows = supervised_logits(model, batch)
        weights = 1 + (cfg.refusal_weight - 1) * batch["refusal"][rows].float()  # [n]
        token_loss = F.cross_entropy(logits, targets, reduction="none")  # [n]
        loss = global_weighted_mean(token_loss, weights)
        metrics = {"sft": token_loss.mean().detach(),
                   "token_acc": (logits.argmax(dim=-1) == targets).float().mean().detach()}
        if cfg.unlikelihood > 0 and bool((batch["unsafe_labels"] != IGNORE_INDEX).any()):
            unsafe_logits, unsafe_targets, _ = supervised_logits(model, batch, prefix="unsafe_")
            unlikely = unlikelihood_loss(unsafe_logits, unsafe_targets)
            loss = loss + cfg.unlikelihood * unlikely
            metrics["unlikelihood"] = unlikely.detach()
        return loss, metrics
