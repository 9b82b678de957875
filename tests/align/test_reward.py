"""Reward model: the Bradley–Terry loss by hand, checkpoints, and held-out pair accuracy after training."""

import math

import pytest
import torch

from vlstack.align.logprobs import load_engine
from vlstack.align.preference import preference_data, preference_pairs
from vlstack.align.reward import (
    HEAD_NAME,
    RewardConfig,
    RewardModel,
    load_reward_model,
    reward_objective,
    save_reward_model,
    train_reward_model,
)
from vlstack.checkpoint import load_model
from vlstack.errors import CheckpointError
from vlstack.synthetic.preferences import CANDIDATES, preference_samples
from vlstack.train.trainer import TrainConfig


def test_bradley_terry_loss_by_hand():
    """Scores chosen (1, 0), rejected (0, 1): margins 1 and -1, loss = (log(1 + e^-1) + log(1 + e)) / 2."""
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0])  # the chosen rows, then the rejected rows
    batch = {"input_ids": torch.zeros(2, 2, 3, dtype=torch.long), "pixel_values": torch.zeros(2, 3, 4, 4)}
    loss, metrics = reward_objective(lambda rows: scores, batch)
    assert loss.item() == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 2, abs=1e-6)
    assert metrics["pair_accuracy"] == 0.5


def test_save_and_load_keep_the_scores_and_the_backbone_loads_alone(nano_checkpoint, tmp_path, alignment_data):
    engine = load_engine(str(nano_checkpoint))
    torch.manual_seed(0)
    model = RewardModel(engine.model).eval()
    pairs = preference_data(engine, alignment_data(3, 2), "train")
    rows = {k: v[:, 0] if k != "pixel_values" else v for k, v in pairs.items()}
    save_reward_model(model, tmp_path / "rm", engine.tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(load_reward_model(tmp_path / "rm")(rows), model(rows), rtol=0, atol=0)
    load_model(tmp_path / "rm")  # an ordinary checkpoint, plus the head
    (tmp_path / "rm" / HEAD_NAME).unlink()
    with pytest.raises(CheckpointError, match="is not a reward model"):
        load_reward_model(tmp_path / "rm")


@pytest.mark.long
def test_reward_model_prefers_the_correct_answer_on_held_out_scenes(sft_checkpoint, tmp_path, alignment_data):
    """Colour questions; chosen: the true colour, rejected: a colour no object in the scene has (a
    hallucination). Chance is 0.5; the target is 0.9 on 200 held-out pairs. About two CPU minutes."""
    data = alignment_data(1000, 200, ["color"], "absent")
    config = RewardConfig(checkpoint=str(sft_checkpoint), out_dir=str(tmp_path / "rm"), data=data,
                          train=TrainConfig(steps=1200, batch_size=16, lr=3e-4, warmup_steps=10, precision="fp32",
                                            log_every=50, measure_mfu=False, tensorboard=False))
    results = train_reward_model(config)
    assert results["chance"] == 0.5 and results["held_out_pairs"] == 200
    assert results["pair_accuracy"] >= 0.9, results["pair_accuracy"]
    assert results["pair_accuracy_before"] < 0.7
    load_reward_model(results["checkpoint"])


def test_absent_rejections_name_nothing_in_the_scene():
    samples = preference_samples(40, "train", ["color", "shape"], "absent")
    for pair in preference_pairs(samples):
        kind = pair.sample.meta["question_type"]
        assert pair.rejected not in {o[kind] for o in pair.sample.meta["objects"][0]}
        assert pair.rejected != pair.chosen and pair.rejected in CANDIDATES[kind]
