"""PPO: GAE, the clipped losses, KL-shaped rewards and the KL controller by hand; runs through the Engine."""

import dataclasses
import json

import pytest
import torch

from vlstack.align.ppo import (
    KLConfig,
    KLController,
    PPOConfig,
    clipped_surrogate,
    clipped_value_loss,
    gae,
    run_ppo,
    token_rewards,
    whiten,
)
from vlstack.align.reward import RewardModel, save_reward_model
from vlstack.align.rollouts import RolloutConfig
from vlstack.checkpoint import load_model
from vlstack.errors import ConfigError
from vlstack.infer.engine import Engine
from vlstack.models.tokenizer import load_tokenizer
from vlstack.train.trainer import TrainConfig


def test_gae_by_hand():
    """gamma 0.9, lambda 0.8 (gamma * lambda = 0.72). Row 0: a prompt position, then three answer tokens;
    row 1: two answer tokens, then padding.
    Row 0: delta_3 = 1.0 - 0.3 = 0.7 -> A_3 = 0.7; delta_2 = 0.2 + 0.9 * 0.3 - 0.4 = 0.07 -> A_2 = 0.07 + 0.72 * 0.7
    = 0.574; delta_1 = -0.1 + 0.9 * 0.4 - 0.5 = -0.24 -> A_1 = -0.24 + 0.72 * 0.574 = 0.17328.
    Row 1: delta_1 = 2.0 - 1.5 = 0.5 -> A_1 = 0.5; delta_0 = 0.5 + 0.9 * 1.5 - 1.0 = 0.85 -> A_0 = 0.85 + 0.72 * 0.5
    = 1.21. Returns are A + V on the answer tokens."""
    rewards = torch.tensor([[0.0, -0.1, 0.2, 1.0], [0.5, 2.0, 0.0, 0.0]])
    values = torch.tensor([[9.0, 0.5, 0.4, 0.3], [1.0, 1.5, 7.0, 7.0]])
    mask = torch.tensor([[0.0, 1, 1, 1], [1, 1, 0, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(advantages, torch.tensor([[0.0, 0.17328, 0.574, 0.7], [1.21, 0.5, 0.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.0, 0.67328, 0.974, 1.0], [2.21, 2.0, 0.0, 0.0]]))


def test_clipped_surrogate_by_hand():
    """eps 0.2. ratio 1.5, A +1: max(-1.5, -1.2) = -1.2 (clipped); ratio 0.5, A +1: max(-0.5, -0.8) = -0.5;
    ratio 1.1, A -1: 1.1 either way (not clipped); ratio 0.7, A -1: max(0.7, 0.8) = 0.8 (clipped)."""
    ratios = torch.tensor([1.5, 0.5, 1.1, 0.7])
    old = torch.tensor([-1.0, -2.0, -0.5, -3.0])
    loss, clipped = clipped_surrogate(old + ratios.log(), old, torch.tensor([1.0, 1.0, -1.0, -1.0]), clip=0.2)
    torch.testing.assert_close(loss, torch.tensor([-1.2, -0.5, 1.1, 0.8]))
    assert clipped.tolist() == [True, False, False, True]


def test_clipped_value_loss_by_hand():
    """clip 0.2: V (1.0, 2.0) from V_old (0.5, 0.5) clip to (0.7, 0.7); returns (1.2, 0.0):
    max((1 - 1.2)^2, (0.7 - 1.2)^2) = 0.25, max(4.0, 0.49) = 4.0; halved: 0.125 and 2.0."""
    loss = clipped_value_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[1.2, 0.0]]), clip=0.2)
    torch.testing.assert_close(loss, torch.tensor([[0.125, 2.0]]))


def test_kl_penalty_on_each_token_and_the_score_on_the_last():
    """coef 0.1: per-token KL (log pi_old - log pi_ref) = 0.5 and -1.0 -> rewards -0.05 and 0.1; the score 1.0
    lands on the last answer token."""
    rewards = token_rewards(torch.tensor([1.0]), torch.tensor([[0.0, -1.0, -2.0, 0.0]]),
                            torch.tensor([[0.0, -1.5, -1.0, 0.0]]), torch.tensor([[0.0, 1.0, 1.0, 0.0]]), kl_coef=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[0.0, -0.05, 1.1, 0.0]]))


def test_whiten_uses_only_masked_entries():
    out = whiten(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-6, rtol=0)


def test_kl_controller_fixed_and_adaptive():
    fixed = KLController(KLConfig(coef=0.01))
    fixed.update(kl=100.0, rollouts=32)
    assert fixed.value == 0.01
    adaptive = KLController(KLConfig(coef=0.1, adaptive=True, target=1.0, horizon=100))
    adaptive.update(kl=2.0, rollouts=32)  # error clipped to +0.2: 0.1 * (1 + 0.2 * 32 / 100)
    assert adaptive.value == pytest.approx(0.1064)
    adaptive.update(kl=0.9, rollouts=100)  # error -0.1: * (1 - 0.1)
    assert adaptive.value == pytest.approx(0.1064 * 0.9)


def test_config_errors():
    with pytest.raises(ConfigError, match="needs reward_model=DIR"):
        PPOConfig(reward="model")
    with pytest.raises(ConfigError, match="must divide the 12 rollouts"):
        PPOConfig(rollout=RolloutConfig(prompts=12), train=TrainConfig(batch_size=8))


def _quick(checkpoint, out_dir, data, **fields) -> PPOConfig:
    return PPOConfig(checkpoint=str(checkpoint), out_dir=str(out_dir), iterations=2,
                     rollout=RolloutConfig(prompts=4, max_new_tokens=3, eval_samples=1),
                     data=data,
                     train=TrainConfig(batch_size=2, lr=1e-4, warmup_steps=0, precision="fp32", measure_mfu=False,
                                       tensorboard=False), **fields)


def test_short_run_logs_every_iteration_and_saves_the_policy(nano_checkpoint, tmp_path, alignment_data):
    seen = []
    summary = run_ppo(_quick(nano_checkpoint, tmp_path / "ppo", alignment_data(8, 4)), on_iteration=seen.append)
    lines = [json.loads(line) for line in (tmp_path / "ppo" / "align_log.jsonl").read_text().splitlines()]
    assert lines == seen and len(lines) == 2
    assert {"reward", "kl", "entropy", "clip_fraction", "value_loss", "policy_loss", "kl_coef"} <= set(lines[0])
    assert lines[0]["kl"] == pytest.approx(0, abs=1e-4)  # the first rollouts come from the reference itself
    assert summary["method"] == "ppo" and summary["iterations"] == 2
    Engine.from_checkpoint(summary["checkpoint"])


def test_reward_can_come_from_a_reward_model(nano_checkpoint, tmp_path, alignment_data):
    torch.manual_seed(0)
    save_reward_model(RewardModel(load_model(nano_checkpoint)),
        tmp_path / "rm", load_tokenizer(nano_checkpoint / "tokenizer"))
    config = _quick(nano_checkpoint, tmp_path / "ppo", alignment_data(8, 4), reward="model",
                    reward_model=str(tmp_path / "rm"))
    summary = run_ppo(dataclasses.replace(config, iterations=1))
    record = json.loads((tmp_path / "ppo" / "align_log.jsonl").read_text())
    assert record["reward"] != record["accuracy"]  # the learned score, not the rule
    assert summary["iterations"] == 1


@pytest.mark.slow
def test_ppo_raises_the_reward_with_a_bounded_kl(sft_checkpoint, tmp_path, reward_before_after, alignment_data):
    """Four colour questions, 64 rollouts per iteration, from the SFT warm-up: after 10 iterations the policy's
    reward on them, measured on 64 fresh samples per prompt, is up by at least 0.1 and the KL to the reference
    stays under 1 nat per answer (see the GRPO test for why a handful of prompts). lr 2e-4: since the questions
    come in many phrasings, 1e-4 raised the reward by 0.09 in 10 iterations (0.27 -> 0.36) and 14 did no
    better."""
    data = alignment_data(4, 16, ["color"])
    config = PPOConfig(checkpoint=str(sft_checkpoint), out_dir=str(tmp_path / "ppo"), iterations=10,
                       rollout=RolloutConfig(prompts=64, max_new_tokens=4), data=data,
                       train=TrainConfig(batch_size=16, lr=2e-4, warmup_steps=0, precision="fp32", measure_mfu=False,
                                         tensorboard=False))
    summary = run_ppo(config)
    before, after = reward_before_after(sft_checkpoint, summary["checkpoint"], data)
    assert after >= before + 0.1, (before, after, summary)
    assert summary["kl_max"] < 1.0, summary
