import math

import pytest
import torch
import torch.nn.functional as F

from vlstack.models.words import WORD_TEMPERATURE, content_words, word_log_probs
from vlstack.train.losses import (
    IGNORE_INDEX,
    MAX_LOGIT_SCALE,
    itc_loss,
    itm_loss,
    mask_tokens,
    mlm_loss,
    sample_hard_negatives,
    vtm_loss,
    word_alignment_loss,
)


def test_itc_matches_a_hand_computed_value():
    image = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    text = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    scale = torch.tensor(math.log(10.0))
    # logits = 10 * similarities = [[10, 0], [6, 8]]; rows are image->text, columns text->image
    rows = -(math.log(math.exp(10) / (math.exp(10) + 1)) + math.log(math.exp(8) / (math.exp(6) + math.exp(8)))) / 2
    cols = -(math.log(math.exp(10) / (math.exp(10) + math.exp(6))) + math.log(math.exp(8) / (1 + math.exp(8)))) / 2
    assert itc_loss(image, text, scale).item() == pytest.approx((rows + cols) / 2, rel=1e-6)


def test_itc_temperature_is_clamped():
    x = F.normalize(torch.randn(4, 8), dim=-1)
    assert itc_loss(x, x, torch.tensor(50.0)) == itc_loss(x, x, torch.tensor(MAX_LOGIT_SCALE))


def test_hard_negatives_follow_the_similarity_and_skip_identical_pairs():
    torch.manual_seed(0)
    similarity = torch.tensor([[5.0, 4.0, -9.0], [0.0, 5.0, 0.0], [3.0, 9.0, 5.0]])
    same = torch.eye(3, dtype=torch.bool)
    same[2, 1] = True  # sample 1 has the same caption as sample 2: never a negative for it
    draws = torch.stack([sample_hard_negatives(similarity, same) for _ in range(400)])  # [400, 3]
    assert (draws != torch.arange(3)).all()
    assert (draws[:, 2] == 0).all()  # the only valid negative left for row 2
    assert (draws[:, 0] == 1).float().mean() > 0.99  # e^4 vs e^-9
    assert 0.35 < (draws[:, 1] == 0).float().mean() < 0.65  # equal logits: a fair coin


def test_hard_negatives_fall_back_to_uniform_when_every_column_is_identical():
    same = torch.ones(2, 2, dtype=torch.bool)
    assert sample_hard_negatives(torch.zeros(2, 2), same).tolist() == [1, 0]


def test_itm_loss_is_cross_entropy_over_match_labels():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    labels = torch.tensor([1, 0])
    expected = -(math.log(math.exp(2) / (1 + math.exp(2))) + math.log(math.exp(1) / (math.exp(1) + math.exp(-1)))) / 2
    assert itm_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_mask_tokens_80_10_10_on_maskable_positions_only():
    torch.manual_seed(0)
    ids = torch.randint(10, 100, (400, 50))
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, :5] = False  # e.g. special tokens and padding
    masked, labels = mask_tokens(ids, maskable, mask_id=3, vocab_size=100, probability=0.15)
    picked = labels != IGNORE_INDEX
    assert not picked[:, :5].any() and torch.equal(labels[picked], ids[picked])
    assert picked.any(dim=1).all()  # every row has a target
    assert torch.equal(masked[~picked], ids[~picked])
    share = picked[:, 5:].float().mean().item()
    assert 0.14 < share < 0.17
    n = picked.sum().item()
    assert 0.77 < (masked[picked] == 3).sum().item() / n < 0.83
    kept = (masked[picked] == ids[picked]).sum().item() / n
    assert 0.08 < kept < 0.13  # 10% kept + the random draws that hit the same id


def test_mlm_loss_ignores_unpicked_positions():
    logits = torch.zeros(1, 3, 4)
    logits[0, 1, 2] = math.log(3.0)  # p(2) = 3/6 at position 1
    labels = torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX]])
    assert mlm_loss(logits, labels).item() == pytest.approx(-math.log(0.5), rel=1e-6)


def test_vtm_loss_is_mse_at_masked_positions_against_normalised_targets():
    targets = torch.tensor([[[1.0, 3.0], [10.0, 10.0]]])  # normalised: [-1, 1] (second row unused)
    predicted = torch.tensor([[[0.0, 1.0], [99.0, -99.0]]])
    masked = torch.tensor([[True, False]])
    assert vtm_loss(predicted, targets, masked).item() == pytest.approx((1 + 0) / 2, rel=1e-4)


def test_hard_fraction_zero_draws_uniformly_among_valid_negatives():
    torch.manual_seed(0)
    similarity = torch.tensor([[0.0, 50.0, 0.0, 0.0]]).expand(4, 4).clone()
    same = torch.eye(4, dtype=torch.bool)
    draws = torch.stack([sample_hard_negatives(similarity, same, hard_fraction=0.0) for _ in range(600)])
    shares = torch.stack([(draws[:, 0] == c).float().mean() for c in (1, 2, 3)])
    assert (shares > 0.25).all()  # uniform over the three valid columns despite the spike
    mixed = torch.stack([sample_hard_negatives(similarity, same, hard_fraction=0.5) for _ in range(600)])
    assert 0.55 < (mixed[:, 0] == 1).float().mean() < 0.78  # 0.5 hard (all on column 1) + 0.5 * 1/3


def test_itc_with_a_swapped_caption_as_an_extra_negative():
    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(4, 8, generator=generator), dim=-1)
    texts = F.normalize(images + 0.1 * torch.randn(4, 8, generator=generator), dim=-1)
    scale = torch.tensor([2.0])
    plain = itc_loss(images, texts, scale)
    none = itc_loss(images, texts, scale, texts, torch.zeros(4, dtype=torch.bool))
    close = itc_loss(images, texts, scale, texts, torch.ones(4, dtype=torch.bool))  # as close as the caption
    assert torch.allclose(plain, none) and close > plain


def test_content_words_leave_out_padding_specials_and_the_batchs_function_words():
    # ids: 1 = "a" (every caption), 2 = "red", 3 = "blue", 4 = "circle", 9 = a special token, 0 = padding
    ids = torch.tensor([[9, 1, 2, 4, 0], [9, 1, 3, 4, 0], [9, 1, 2, 0, 0], [9, 1, 3, 3, 0]])
    attention = (ids != 0).long()
    words = content_words(ids, attention, torch.tensor([9]))
    assert words.tolist() == [[False, False, True, True, False], [False, False, True, True, False],
                              [False, False, True, False, False], [False, False, True, True, False]]


def test_word_alignment_is_the_words_mean_negative_log_probability_under_the_summarys_cosines():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])  # words 0, 1, 2
    log_probs = word_log_probs(torch.tensor([[3.0, 0.0]]), embeddings)  # a summary pointing at word 0
    probabilities = torch.softmax(torch.tensor([1.0, 0.0, -1.0]) / WORD_TEMPERATURE, dim=0)
    ids = torch.tensor([[0, 1]])
    one = word_alignment_loss(log_probs, ids, torch.tensor([[True, False]]))
    assert one.item() == pytest.approx(-math.log(probabilities[0]))
    both = word_alignment_loss(log_probs, ids, torch.tensor([[True, True]]))
    assert both.item() == pytest.approx(-(math.log(probabilities[0]) + math.log(probabilities[1])) / 2, rel=1e-5)
