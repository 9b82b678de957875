import itertools

import pytest
import torch
from torch import nn

from vlstack.errors import VlstackError
from vlstack.train.trainer import TrainConfig, Trainer, parameter_groups, warmup_cosine


class Regression(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.norm = nn.LayerNorm(4)  # unused in the loss: only here for the weight-decay groups


def mse(model, batch):
    loss = (model.linear(batch["x"]) - batch["y"]).pow(2).mean()
    return loss, {}


def _batches(poison_at: set[int] = frozenset()):
    torch.manual_seed(0)
    w = torch.randn(4, 1)
    for i in itertools.count():
        x = torch.randn(16, 4)
        y = x @ w
        if i in poison_at:
            x = x * float("nan")
        yield {"x": x, "y": y}


def test_weight_decay_skips_norms_and_biases():
    decay, no_decay = parameter_groups(Regression(), 0.01)
    assert [p.ndim for p in decay["params"]] == [2]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_warmup_then_cosine():
    values = [warmup_cosine(s, warmup=10, total=110, min_ratio=0.1) for s in range(0, 111)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[60] == pytest.approx(0.55) and values[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_training_reduces_the_loss():
    torch.manual_seed(0)
    trainer = Trainer(Regression(), mse, TrainConfig(steps=150, lr=0.05, warmup_steps=5, precision="fp32"))
    history = trainer.fit(_batches())
    assert history[-1]["loss"] < 0.1 * history[0]["loss"]


def test_a_nan_batch_is_skipped_with_a_reason_and_training_continues(tmp_path):
    torch.manual_seed(0)
    model = Regression()
    trainer = Trainer(model, mse, TrainConfig(steps=20, lr=0.05, warmup_steps=1, precision="fp32"),
                      log_path=tmp_path / "log.jsonl")
    history = trainer.fit(_batches(poison_at={3}))
    skipped = [r for r in history if r["skipped"]]
    assert len(skipped) == 1 and skipped[0]["reason"] == "non-finite loss"
    assert trainer.step == 20
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == len(history)


def test_a_diverged_run_stops_with_an_error():
    trainer = Trainer(Regression(), mse, TrainConfig(steps=20, precision="fp32", max_skips_in_a_row=3))
    with pytest.raises(VlstackError, match="4 steps in a row had a non-finite loss"):
        trainer.fit(_batches(poison_at=set(range(100))))
