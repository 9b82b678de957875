"""PPO for the VLM: rollouts through the Engine, a KL-penalised reward, GAE, clipped policy and value losses.

One iteration (Ziegler et al. 2019; Ouyang et al. 2022; the recipe of TRL's PPO trainer):
1. rollout: sample answers to a batch of VQA prompts with the shared generation path (an `Engine`
   around the live policy, so what is trained is exactly what is sampled);
2. score: the old log-probabilities and values of the sampled tokens under the policy, the reference
   log-probabilities under a frozen copy of the starting policy, and a reward per answer from a rule
   (exact answer), a reward model, or both;
3. per-token rewards: -kl_coef * (log pi_old - log pi_ref) on every answer token, plus the answer's reward
   on its last token; advantages by GAE, whitened over the batch;
4. update: `epochs` passes over the rollouts in minibatches with the Trainer's optimizer step, minimising
   the clipped policy loss plus `value_coef` x the clipped value loss (a value head on the policy's hidden
   states, as TRL's `AutoModelForCausalLMWithValueHead`).
The KL coefficient is fixed (the article's 0.01) or adapted towards a target KL (Ziegler et al. 2019, Eq. 2).
The rollouts and the run around the Trainer are shared with GRPO (`rollouts.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from vlstack.align.logprobs import Batch, load_engine, masked_mean, score_responses
from vlstack.align.preference import PreferenceDataConfig, alignment_items
from vlstack.align.reward import RewardModel, load_reward_model, scalar_head
from vlstack.align.rollouts import (
    RolloutConfig,
    check_minibatches,
    frozen_reference,
    gather_rows,
    prompt_batch,
    run_rollout_training,
    sample_share,
)
from vlstack.collectives import global_weighted_mean
from vlstack.data.schema import Sample
from vlstack.errors import ConfigError
from vlstack.infer.engine import Engine
from vlstack.models.vlm import QwenImageModel
from vlstack.train.distributed import init_distributed
from vlstack.train.trainer import TrainConfig

# --- configs ------------------------------------------------------------------------------


@dataclass
class KLConfig:
    """The KL penalty against the frozen reference policy."""

    coef: float = 0.01
    """Initial coefficient (the article's 0.01)."""
    adaptive: bool = False
    """Adapt the coefficient towards `target` (Ziegler et al. 2019): coef *= 1 + clip(KL / target - 1,
    -0.2, 0.2) * rollouts / horizon."""
    target: float = 0.5
    """Target KL per answer (nats) of the adaptive controller."""
    horizon: int = 1000
    """Rollouts over which the adaptive controller corrects a proportional error."""


@dataclass
class PPOConfig:
    """PPO on synthetic VQA prompts."""

    checkpoint: str | None = None
    """The starting policy (normally the SFT checkpoint); a frozen copy is the KL reference."""
    out_dir: str = "runs/align-ppo"
    iterations: int = 20
    """Rollout + update rounds."""
    reward: Literal["rule", "model", "rule+model"] = "rule"
    """rule: 1 for the exact answer, else 0; model: the reward model's score; rule+model: their sum."""
    reward_model: str | None = None
    """A reward-model directory (`vlstack align --method reward`); needed when `reward` uses the model."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    epochs: int = 2
    """Passes of minibatch updates over each batch of rollouts."""
    clip_range: float = 0.2
    """epsilon of the clipped policy ratio."""
    value_clip_range: float = 0.2
    """How far a value prediction may move from its rollout-time value before the loss stops pulling it."""
    value_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    """GAE lambda."""
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        batch_size=16, lr=5e-5, warmup_steps=0, precision="fp32", measure_mfu=False, tensorboard=False))
    """Optimizer settings of the updates: `batch_size` is the minibatch (it must divide rollout.prompts);
    `steps` is set from iterations x epochs x minibatches per iteration."""

    def __post_init__(self) -> None:
        if self.reward != "rule" and not self.reward_model:
            raise ConfigError(f"reward={self.reward!r} needs reward_model=DIR (train one with --method reward)")
        check_minibatches(self.rollout.prompts, self.train, self.iterations, self.epochs)


# --- the pieces: KL control, GAE, clipped losses ------------------------------------------------


class KLController:
    """The KL coefficient: fixed, or adapted towards a target KL (Ziegler et al. 2019)."""

    def __init__(self, config: KLConfig):
        self.config = config
        self.value = config.coef

    def update(self, kl: float, rollouts: int) -> None:
        cfg = self.config
        if cfg.adaptive:
            error = min(max(kl / cfg.target - 1, -0.2), 0.2)
            self.value *= 1 + error * rollouts / cfg.horizon


def token_rewards(scores: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float) -> torch.Tensor:
    """[B, L] rewards: -kl_coef * (log pi_old - log pi_ref) per answer token, plus the answer's score [B]
    on its last token."""
    rewards = -kl_coef * (old_logprobs - ref_logprobs) * mask
    last = mask.shape[1] - 1 - mask.flip(1).argmax(dim=1)  # [B] index of the last answer token
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the masked (contiguous) answer tokens of each row.

    delta_t = r_t + gamma V_{t+1} - V_t (V after the last token is 0), A_t = delta_t + gamma lam A_{t+1}.
    Returns advantages and returns (A + V), both [B, L] and 0 off the mask.
    """
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_mask = mask[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        next_value = values[:, t + 1] * next_mask if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * next_mask * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(values - mean) / std over the masked entries; 0 off the mask."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + eps) * mask


def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO policy loss max(-A r, -A clip(r, 1 - eps, 1 + eps)) with r = pi / pi_old, and where the
    clipped term won (the clip fraction's numerator)."""
    ratio = (logprobs - old_logprobs).exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    return torch.maximum(unclipped, clipped), (clipped > unclipped)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float
                       ) -> torch.Tensor:
    """Per-token 0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped = V_old + clip(V - V_old, -c, c)."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)


class PolicyWithValue(nn.Module):
    """The policy and a scalar value head on its hidden states (trained together, one optimizer)."""

    def __init__(self, policy: QwenImageModel):
        super().__init__()
        self.policy = policy
        self.value_head = scalar_head(policy.config.language.hidden_size)

    def transformer_blocks(self) -> list[nn.Module]:
        return self.policy.transformer_blocks()

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.value_head(hidden).squeeze(-1).float()  # [B, L, D] -> [B, L]


class PPOObjective:
    """Clipped policy loss + value_coef x clipped value loss on a minibatch of scored rollouts: token means over
    the whole minibatch, every rank's share of it together (`global_weighted_mean`)."""

    def __init__(self, config: PPOConfig):
        self.config = config

    def __call__(self, model: PolicyWithValue, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        scores = score_responses(model.policy, batch, with_entropy=True)
        mask = scores.mask
        per_token, clipped = clipped_surrogate(scores.logprobs, batch["old_logprobs"], batch["advantages"],
                                               cfg.clip_range)
        policy_loss = global_weighted_mean(per_token, mask)
        values = model.values(scores.hidden)
        value_loss = global_weighted_mean(
            clipped_value_loss(values, batch["old_values"], batch["returns"], cfg.value_clip_range), mask)
        log_ratio = scores.logprobs - batch["old_logprobs"]
        return policy_loss + cfg.value_coef * value_loss, {
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "clip_fraction": masked_mean(clipped.float(), mask).detach(),
            "entropy": masked_mean(scores.entropy, mask).detach(),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask).detach(),
        }


# --- the run ----------------------------------------------------------------------------------


class PPORollouts:
    """Makes PPO's iteration i: sample answers to its prompts, score them (rule and/or reward model), the
    old and reference log-probabilities and the old values, per-token KL-penalised rewards, GAE."""

    def __init__(self, config: PPOConfig, engine: Engine, model: PolicyWithValue, reference: QwenImageModel,
                 reward_model: RewardModel | None, prompts: list[Sample]):
        self.config, self.engine, self.model, self.reference = config, engine, model, reference
        self.reward_model, self.prompts = reward_model, prompts
        self.kl = KLController(config.kl)

    def __call__(self, iteration: int, rank: int = 0, world: int = 1) -> tuple[Batch, dict[str, float]]:
        config, model = self.config, self.model
        prompts = prompt_batch(self.prompts, config.rollout.prompts, iteration)
        part = sample_share(self.engine, self.reference, prompts, config.rollout, config.train.seed, iteration,
                            rank, world)
        batch, old = part.rollouts.batch, part.old
        with torch.no_grad():
            scores = _answer_scores(config, part.rollouts.rewards, self.reward_model, batch)
            old_values = model.values(old.hidden) * old.mask
        scored = gather_rows({**batch, "scores": scores, "correct": part.rollouts.rewards, "old_logprobs": old.logprobs,
                              "ref_logprobs": part.ref.logprobs, "old_values": old_values},
                             self.engine.tokenizer.pad_token_id)
        mask = scored["response_mask"][:, 1:].to(scored["old_logprobs"].dtype)  # [N, T - 1] the answer tokens
        old_logprobs, ref_logprobs = scored.pop("old_logprobs"), scored.pop("ref_logprobs")
        answer_scores, correct = scored.pop("scores"), scored.pop("correct")
        rewards = token_rewards(answer_scores, old_logprobs, ref_logprobs, mask, self.kl.value)
        advantages, returns = gae(rewards, scored["old_values"], mask, config.gamma, config.lam)
        dataset = {**scored, "old_logprobs": old_logprobs, "advantages": whiten(advantages, mask), "returns": returns}
        sequence_kl = ((old_logprobs - ref_logprobs) * mask).sum(dim=1)  # [N] nats per answer
        record = {"reward": answer_scores.mean().item(), "accuracy": correct.mean().item(),
                  "kl": sequence_kl.mean().item(), "kl_coef": self.kl.value,
                  "response_tokens": mask.sum(dim=1).mean().item()}
        self.kl.update(record["kl"], len(prompts))
        return dataset, record

    def state_dict(self) -> dict[str, float]:
        return {"kl_coef": self.kl.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.kl.value = state["kl_coef"]


def run_ppo(config: PPOConfig, on_iteration: Callable[[dict], None] | None = None, resume: bool = False,
             trust: bool = False) -> dict:
    """PPO from `config.checkpoint`; writes OUT_DIR/align_log.jsonl, OUT_DIR/train_log.jsonl, OUT_DIR/checkpoint
    (the policy, resumable) and OUT_DIR/align.json, and returns the summary (reward, KL and held-out accuracy
    before and after). With `resume`, an interrupted run continues exactly."""
    dist_info = init_distributed(config.train.parallel.mode, config.train.device)
    engine = load_engine(config.checkpoint, dist_info.device)
    torch.manual_seed(config.train.seed)  # the value head's init
    model = PolicyWithValue(engine.model).to(dist_info.device)
    reward_model = load_reward_model(config.reward_model).to(dist_info.device) if config.reward != "rule" else None
    make = PPORollouts(config, engine, model, frozen_reference(config.checkpoint, dist_info.device), reward_model,
                       alignment_items(config.data, "train"))
    steps = config.iterations * config.epochs * config.rollout.prompts // config.train.batch_size
    return run_rollout_training("ppo", model, PPOObjective(config), make, engine,
                                alignment_items(config.data, "held_out"), config.rollout, config.train, steps,
                                config.epochs, Path(config.out_dir), resume, dist_info, on_iteration, trust)


def _answer_scores(config: PPOConfig, correct: torch.Tensor, reward_model: RewardModel | None, batch: Batch
                   ) -> torch.Tensor:
    if reward_model is None:
        return correct
    with torch.no_grad():
        learned = torch.cat([reward_model({k: v[i : i + 64] for k, v in batch.items()}).cpu()
                             for i in range(0, len(batch["input_ids"]), 64)])
    return learned + correct if config.reward == "rule+model" else learned
