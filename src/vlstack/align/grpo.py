"""GRPO (Shao et al. 2024, DeepSeekMath): group-normalised advantages from verifiable rewards, no critic.

Each iteration samples G answers per prompt through the Engine, rewards each by exact-answer correctness
(`answer_reward`), and gives every token of answer i the advantage (r_i - mean(r_group)) / (std(r_group)
+ eps), std with Bessel's correction as TRL's GRPOTrainer computes it. The loss per token is PPO's
clipped surrogate plus beta x the unbiased KL estimate to the frozen reference,
exp(ref - logp) - (ref - logp) - 1 (Schulman's k3); it is averaged over each answer's tokens, then over
answers (the paper's Eq. 3). A group whose answers all score the same has zero advantage: it teaches
nothing but the KL term.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from vlstack.align.logprobs import Batch, load_engine, masked_mean, score_responses
from vlstack.align.ppo import (
    RolloutConfig,
    RunLog,
    check_minibatches,
    clipped_surrogate,
    frozen_reference,
    generate_rollouts,
    held_out_figures,
    prompt_batch,
    rollout_seed,
    score_in_chunks,
    update_policy,
    write_summary,
)
from vlstack.align.preference import PreferenceDataConfig, alignment_items
from vlstack.errors import ConfigError
from vlstack.models.vlm import QwenImageModel
from vlstack.train.trainer import TrainConfig


@dataclass
class GRPOConfig:
    """GRPO on synthetic VQA with the exact-answer reward."""

    checkpoint: str | None = None
    """The starting policy (normally the SFT checkpoint); a frozen copy is the KL reference."""
    out_dir: str = "runs/align-grpo"
    iterations: int = 20
    group_size: int = 8
    """G: answers sampled per prompt."""
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(prompts=8))
    """`prompts` per iteration; each is sampled `group_size` times."""
    beta: float = 0.04
    """KL coefficient (DeepSeekMath's 0.04)."""
    clip_range: float = 0.2
    epochs: int = 1
    """Passes over each iteration's rollouts (mu); with one minibatch per pass and mu = 1 the ratio stays 1."""
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        batch_size=32, lr=5e-5, warmup_steps=0, precision="fp32", measure_mfu=False, tensorboard=False))
    """Optimizer settings: `batch_size` is the minibatch (it must divide prompts x group_size); `steps` is set
    from iterations x epochs x minibatches per iteration."""

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ConfigError(f"group_size must be at least 2 (advantages compare answers within a group), "
                              f"got {self.group_size}")
        check_minibatches(self.rollout.prompts * self.group_size, self.train, self.iterations, self.epochs)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """[P * G] rewards (groups contiguous) -> (r - group mean) / (group std + eps), [P * G]."""
    groups = rewards.view(-1, group_size)  # [P, G]
    return ((groups - groups.mean(dim=1, keepdim=True)) / (groups.std(dim=1, keepdim=True) + eps)).view(-1)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token unbiased, non-negative estimate of KL(pi || pi_ref) from samples of pi."""
    delta = ref_logprobs - logprobs
    return delta.exp() - delta - 1


class GRPOObjective:
    def __init__(self, clip_range: float, beta: float):
        self.clip_range, self.beta = clip_range, beta

    def __call__(self, model: QwenImageModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        scores = score_responses(model, batch, with_entropy=True)
        mask = scores.mask
        surrogate, clipped = clipped_surrogate(scores.logprobs, batch["old_logprobs"], batch["advantages"][:, None],
                                               self.clip_range)
        kl = k3_kl(scores.logprobs, batch["ref_logprobs"])
        per_answer = ((surrogate + self.beta * kl) * mask).sum(dim=1) / mask.sum(dim=1)  # [B]
        return per_answer.mean(), {
            "clip_fraction": masked_mean(clipped.float(), mask).item(),
            "kl_k3": masked_mean(kl, mask).item(),
            "entropy": masked_mean(scores.entropy, mask).item(),
        }


def run_grpo(config: GRPOConfig, on_iteration: Callable[[dict], None] | None = None) -> dict:
    """GRPO from `config.checkpoint`; writes OUT_DIR/align_log.jsonl, OUT_DIR/checkpoint and OUT_DIR/align.json,
    and returns the summary (reward, KL and held-out accuracy before and after)."""
    engine = load_engine(config.checkpoint)
    policy = engine.model
    reference = frozen_reference(config.checkpoint)
    train_samples = alignment_items(config.data, "train")
    held_out = alignment_items(config.data, "held_out")
    before = held_out_figures(engine, held_out, config.rollout)
    G = config.group_size
    rollouts_per_iteration = config.rollout.prompts * G
    total_steps = config.iterations * config.epochs * rollouts_per_iteration // config.train.batch_size
    objective = GRPOObjective(config.clip_range, config.beta)
    out = Path(config.out_dir)
    trainer = None
    started = time.perf_counter()
    with RunLog(out, config.iterations, "GRPO") as log:
        for iteration in range(config.iterations):
            prompts = prompt_batch(train_samples, config.rollout.prompts, iteration)
            grouped = [sample for sample in prompts for _ in range(G)]  # each prompt G times, groups contiguous
            seeds = [rollout_seed(config.train.seed, iteration, row) for row in range(len(grouped))]
            rollouts = generate_rollouts(engine, grouped, config.rollout, seeds)
            rewards = rollouts.rewards
            old = score_in_chunks(policy, rollouts.batch)
            ref = score_in_chunks(reference, rollouts.batch)
            dataset = {**rollouts.batch, "old_logprobs": old.logprobs, "ref_logprobs": ref.logprobs,
                       "advantages": group_advantages(rewards, G)}
            trainer, update = update_policy(trainer, policy, objective, config.train, dataset, total_steps,
                                            config.epochs, iteration)
            sequence_kl = ((old.logprobs - ref.logprobs) * old.mask).sum(dim=1)  # [N] nats per answer
            uniform = rewards.view(-1, G).std(dim=1) == 0  # groups that teach nothing but the KL term
            record = {"iteration": iteration + 1, "reward": rewards.mean().item(), "kl": sequence_kl.mean().item(),
                      "uniform_groups": uniform.float().mean().item(),
                      "response_tokens": old.mask.sum(dim=1).mean().item(), **update,
                      "seconds": round(time.perf_counter() - started, 2)}
            log.write(record, ("reward", "kl", "entropy", "clip_fraction"))
            if on_iteration is not None:
                on_iteration(record)
    policy.save_pretrained(out / "checkpoint", engine.tokenizer)
    return write_summary("grpo", out, log.records, before, held_out_figures(engine, held_out, config.rollout))
