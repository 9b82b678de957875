"""GRPO: group advantages and the k3 KL by hand, the objective, the CLI, and a learning run."""

import json
import math
from pathlib import Path

import pytest
import torch

from vlstack.align.grpo import GRPOConfig, GRPOObjective, group_advantages, k3_kl, run_grpo
from vlstack.align.logprobs import load_engine, score_responses
from vlstack.align.preference import alignment_items
from vlstack.align.rollouts import RolloutConfig, generate_rollouts
from vlstack.cli import main
from vlstack.errors import ConfigError
from vlstack.synthetic.preferences import vqa_samples
from vlstack.train.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def test_group_advantages_by_hand():
    """Groups of 4 (std with Bessel's correction, eps 1e-4):
    (1, 0, 0, 1): mean 0.5, std sqrt(1 / 3) = 0.57735 -> +-0.5 / 0.57745;
    (1, 1, 1, 1): all equal -> 0;
    (1, 0, 0, 0): mean 0.25, std sqrt(0.75 / 3) = 0.5 -> 0.75 / 0.5001 and -0.25 / 0.5001."""
    advantages = group_advantages(torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0]), group_size=4)
    a, b = 0.5 / (math.sqrt(1 / 3) + 1e-4), 1 / 0.5001
    expected = torch.tensor([a, -a, -a, a, 0, 0, 0, 0, 0.75 * b, -0.25 * b, -0.25 * b, -0.25 * b])
    torch.testing.assert_close(advantages, expected)


def test_k3_kl_by_hand():
    """exp(d) - d - 1 with d = ref - logp: 0 at d = 0; at d = log 2: 2 - 0.693147 - 1 = 0.306853."""
    kl = k3_kl(torch.tensor([-1.0, -1.0 - math.log(2)]), torch.tensor([-1.0, -1.0]))
    torch.testing.assert_close(kl, torch.tensor([0.0, 2 - math.log(2) - 1]))


def test_on_policy_objective_is_minus_the_mean_advantage(nano_checkpoint):
    """With pi = pi_old = pi_ref the ratio is 1 and the KL 0, so the loss is -mean(A), and its gradient
    raises the log-probability of the answers with positive advantage."""
    engine = load_engine(str(nano_checkpoint))
    samples = vqa_samples(4, "train")
    rollouts = generate_rollouts(engine, samples, RolloutConfig(max_new_tokens=3), seeds=[0, 1, 2, 3])
    batch = rollouts.batch
    with torch.no_grad():
        logprobs = score_responses(engine.model, batch).logprobs
    advantages = torch.tensor([1.0, -1.0, 0.5, 0.25])
    batch = {**batch, "old_logprobs": logprobs, "ref_logprobs": logprobs, "advantages": advantages}
    loss, metrics = GRPOObjective(clip_range=0.2, beta=0.04)(engine.model, batch)
    assert loss.item() == pytest.approx(-advantages.mean().item(), abs=1e-5)
    assert metrics["clip_fraction"] == 0 and metrics["kl_k3"] == pytest.approx(0, abs=1e-6)


def test_config_errors():
    with pytest.raises(ConfigError, match="group_size must be at least 2"):
        GRPOConfig(group_size=1)
    with pytest.raises(ConfigError, match="must divide the 24 rollouts"):
        GRPOConfig(group_size=3, rollout=RolloutConfig(prompts=8), train=TrainConfig(batch_size=16))
    with pytest.raises(ConfigError, match="data.train is not set"):
        alignment_items(GRPOConfig().data, "train")


def test_cli_runs_grpo_from_the_recipe(nano_checkpoint, tmp_path, capsys, alignment_data):
    data = alignment_data(8, 2)
    out = tmp_path / "grpo"
    code = main(["align", "--method", "grpo", "--config", str(ROOT / "configs" / "align_grpo.yaml"),
                 "--set", f"checkpoint={nano_checkpoint}", "--set", f"out_dir={out}", "--set", "iterations=1",
                 "--set", "rollout.prompts=2", "--set", "group_size=2", "--set", "train.batch_size=4",
                 "--set", "rollout.max_new_tokens=3", "--set", f"data.train={data.train}",
                 "--set", f"data.held_out={data.held_out}"])
    assert code == 0
    assert json.loads((out / "align.json").read_text())["iterations"] == 1
    assert "reward" in capsys.readouterr().out


@pytest.mark.slow
def test_grpo_raises_the_reward_with_a_bounded_kl(sft_checkpoint, tmp_path, reward_before_after, alignment_data):
    """Four colour questions, 16 answers each per iteration, from the SFT warm-up (sampled answers right about
    half the time): after 10 iterations the policy's reward on them, measured on 64 fresh samples per prompt,
    is up by at least 0.1 and the KL to the reference stays under 1 nat per answer. (A handful of prompts keeps
    the run short; the nano model does not learn left from right in that time, so held-out accuracy is not
    the point here.)"""
    data = alignment_data(4, 16, ["color"])
    config = GRPOConfig(checkpoint=str(sft_checkpoint), out_dir=str(tmp_path / "grpo"), iterations=10,
                        group_size=16, epochs=2, rollout=RolloutConfig(prompts=4, max_new_tokens=4), data=data,
                        train=TrainConfig(batch_size=16, lr=1e-4, warmup_steps=0, precision="fp32",
                                          measure_mfu=False, tensorboard=False))
    summary = run_grpo(config)
    before, after = reward_before_after(sft_checkpoint, summary["checkpoint"], data)
    assert after >= before + 0.1, (before, after, summary)
    assert summary["kl_max"] < 1.0, summary
