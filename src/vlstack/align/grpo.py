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

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlstack.align.logprobs import Batch, load_engine, masked_mean, score_responses
from vlstack.align.ppo import clipped_surrogate
from vlstack.align.preference import PreferenceDataConfig, alignment_items
from vlstack.align.rollouts import (
    RolloutConfig,
    check_minibatches,
    frozen_reference,
    gather_rows,
    prompt_batch,
    run_rollout_training,
    sample_share,
)
from vlstack.data.schema import Sample
from vlstack.errors import ConfigError
from vlstack.infer.engine import Engine
from vlstack.models.vlm import QwenImageModel
from vlstack.train.distributed import init_distributed
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

    def __call__(self, model: QwenImageModel, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scores = score_responses(model, batch, with_entropy=True)
        mask = scores.mask
        surrogate, clipped = clipped_surrogate(scores.logprobs, batch["old_logprobs"], batch["advantages"][:, None],
                                               self.clip_range)
        kl = k3_kl(scores.logprobs, batch["ref_logprobs"])
        per_answer = ((surrogate + self.beta * kl) * mask).sum(dim=1) / mask.sum(dim=1)  # [B]
        return per_answer.mean(), {
            "clip_fraction": masked_mean(clipped.float(), mask).detach(),
            "kl_k3": masked_mean(kl, mask).detach(),
            "entropy": masked_mean(scores.entropy, mask).detach(),
        }


class GRPORollouts:
    """Makes GRPO's iteration i: `group_size` sampled answers per prompt (groups contiguous), their exact-answer
    rewards and group-normalised advantages, the old and reference log-probabilities."""

    def __init__(self, config: GRPOConfig, engine: Engine, reference: QwenImageModel, prompts: list[Sample]):
        self.config, self.engine, self.reference, self.prompts = config, engine, reference, prompts

    def __call__(self, iteration: int, rank: int = 0, world: int = 1) -> tuple[Batch, dict[str, float]]:
        config, G = self.config, self.config.group_size
        prompts = prompt_batch(self.prompts, config.rollout.prompts, iteration)
        grouped = [sample for sample in prompts for _ in range(G)]  # each prompt G times, groups contiguous
        part = sample_share(self.engine, self.reference, grouped, config.rollout, config.train.seed, iteration,
                            rank, world)
        dataset = gather_rows({**part.rollouts.batch, "rewards": part.rollouts.rewards,
                               "old_logprobs": part.old.logprobs, "ref_logprobs": part.ref.logprobs},
                              self.engine.tokenizer.pad_token_id)
        rewards = dataset.pop("rewards")
        dataset["advantages"] = group_advantages(rewards, G)
        mask = dataset["response_mask"][:, 1:].to(dataset["old_logprobs"].dtype)  # [N, T - 1] the answer tokens
        sequence_kl = ((dataset["old_logprobs"] - dataset["ref_logprobs"]) * mask).sum(dim=1)  # [N] nats per answer
        uniform = rewards.view(-1, G).std(dim=1) == 0  # groups that teach nothing but the KL term
        return dataset, {"reward": rewards.mean().item(), "kl": sequence_kl.mean().item(),
                         "uniform_groups": uniform.float().mean().item(),
                         "response_tokens": mask.sum(dim=1).mean().item()}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def run_grpo(config: GRPOConfig, on_iteration: Callable[[dict], None] | None = None, resume: bool = False,
             trust: bool = False) -> dict:
    """GRPO from `config.checkpoint`; writes OUT_DIR/align_log.jsonl, OUT_DIR/train_log.jsonl, OUT_DIR/checkpoint
    (the policy, resumable) and OUT_DIR/align.json, and returns the summary (reward, KL and held-out accuracy
    before and after). With `resume`, an interrupted run continues exactly."""
    dist_info = init_distributed(config.train.parallel.mode, config.train.device)
    engine = load_engine(config.checkpoint, dist_info.device)
    make = GRPORollouts(config, engine, frozen_reference(config.checkpoint, dist_info.device),
                        alignment_items(config.data, "train"))
    steps = config.iterations * config.epochs * config.rollout.prompts * config.group_size // config.train.batch_size
    return run_rollout_training("grpo", engine.model, GRPOObjective(config.clip_range, config.beta), make, engine,
                                alignment_items(config.data, "held_out"), config.rollout, config.train, steps,
                                config.epochs, Path(config.out_dir), resume, dist_info, on_iteration, trust)
