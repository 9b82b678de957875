import math

import pytest
import torch
import torch.nn.functional as F

from vlstack.train.losses import MAX_LOGIT_SCALE, itc_loss


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
