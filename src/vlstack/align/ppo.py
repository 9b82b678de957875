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
The KL coefficient is fixed (seed: 0.01) or adapted towards a target KL (Ziegler et al. 2019, Eq. 2).
Rollout and update helpers here are shared with GRPO (`grpo.py`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import nn

from vlstack.align.logprobs import Batch, ResponseScores, encode_responses, load_engine, masked_mean, score_responses
from vlstack.align.preference import (
    PreferenceDataConfig,
    alignment_items,
    answer_accuracy,
    answer_of,
    answer_reward,
    prompt_request,
)
from vlstack.align.reward import RewardModel, scalar_head
from vlstack.data.loader import GlobalBatches
from vlstack.data.schema import Sample
from vlstack.errors import ConfigError
from vlstack.infer.engine import Engine
from vlstack.models.tokenizer import IM_END
from vlstack.models.vlm import QwenImageModel
from vlstack.progress import progress_bar
from vlstack.train.trainer import Objective, TrainConfig, Trainer

LOG_NAME = "align_log.jsonl"


# --- configs ------------------------------------------------------------------------------


@dataclass
class RolloutConfig:
    """How answers are sampled: from the policy's own distribution (temperature 1, no top-k or top-p), the
    distribution whose log-probabilities the policy-ratio terms use."""

    prompts: int = 32
    """Prompts per iteration."""
    max_new_tokens: int = 8
    eval_samples: int = 4
    """Sampled answers per held-out prompt for the held-out reward before and after training."""

    def __post_init__(self) -> None:
        if min(self.prompts, self.max_new_tokens, self.eval_samples) < 1:
            raise ConfigError("rollout.prompts, rollout.max_new_tokens and rollout.eval_samples must be at least 1")


@dataclass
class KLConfig:
    """The KL penalty against the frozen reference policy."""

    coef: float = 0.01
    """Initial coefficient (the seed's 0.01)."""
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


def check_minibatches(rollouts: int, train: TrainConfig, iterations: int, epochs: int) -> None:
    if iterations < 1 or epochs < 1:
        raise ConfigError("iterations and epochs must be at least 1")
    if rollouts % train.batch_size:
        raise ConfigError(f"train.batch_size (the minibatch, {train.batch_size}) must divide the {rollouts} "
                          "rollouts of an iteration")


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


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip: float) -> torch.Tensor:
    """0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped = V_old + clip(V - V_old, -c, c); token mean."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


class PolicyWithValue(nn.Module):
    """The policy and a scalar value head on its hidden states (trained together, one optimizer)."""

    def __init__(self, policy: QwenImageModel):
        super().__init__()
        self.policy = policy
        self.value_head = scalar_head(policy.config.language.hidden_size)

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.value_head(hidden).squeeze(-1).float()  # [B, L, D] -> [B, L]


class PPOObjective:
    """Clipped policy loss + value_coef x clipped value loss on a minibatch of scored rollouts."""

    def __init__(self, config: PPOConfig):
        self.config = config

    def __call__(self, model: PolicyWithValue, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        scores = score_responses(model.policy, batch, with_entropy=True)
        mask = scores.mask
        per_token, clipped = clipped_surrogate(scores.logprobs, batch["old_logprobs"], batch["advantages"],
                                               cfg.clip_range)
        policy_loss = masked_mean(per_token, mask)
        values = model.values(scores.hidden)
        value_loss = clipped_value_loss(values, batch["old_values"], batch["returns"], mask, cfg.value_clip_range)
        log_ratio = scores.logprobs - batch["old_logprobs"]
        return policy_loss + cfg.value_coef * value_loss, {
            "policy_loss": policy_loss.item(),
            "value_loss": value_loss.item(),
            "clip_fraction": masked_mean(clipped.float(), mask).item(),
            "entropy": masked_mean(scores.entropy, mask).item(),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask).item(),
        }


# --- rollouts and updates (shared with GRPO) ---------------------------------------------------


@dataclass
class Rollouts:
    texts: list[str]
    rewards: torch.Tensor
    """[N] the exact-answer reward of each answer."""
    batch: Batch
    """Scoring rows of the prompts + sampled answers (`encode_responses` keys)."""


def generate_rollouts(engine: Engine, samples: list[Sample], config: RolloutConfig, seeds: list[int]) -> Rollouts:
    """Sample one answer per prompt through the Engine (one seed each) and judge it by `answer_reward`; a
    stopped answer keeps its `<|im_end|>`, whose probability is part of the answer's."""
    requests = [prompt_request(s, max_new_tokens=config.max_new_tokens, temperature=1.0, seed=seed)
                for s, seed in zip(samples, seeds)]
    results = engine.generate(requests)
    stop_id = engine.tokenizer.convert_tokens_to_ids(IM_END)
    responses = [r.token_ids + ([stop_id] if r.finish_reason == "stop" else []) for r in results]
    rewards = torch.tensor([answer_reward(r.text, answer_of(s)) for r, s in zip(results, samples)])
    return Rollouts([r.text for r in results], rewards, encode_responses(engine, requests, responses))


def sampled_reward(engine: Engine, samples: list[Sample], config: RolloutConfig, per_prompt: int) -> float:
    """Mean exact-answer reward of `per_prompt` sampled answers to each prompt (seeds 0, 1, ...): the policy's
    expected reward as its rollouts see it, measured the same way before and after training."""
    prompts = [s for s in samples for _ in range(per_prompt)]
    return generate_rollouts(engine, prompts, config, list(range(len(prompts)))).rewards.mean().item()


@torch.no_grad()
def score_in_chunks(model: QwenImageModel, batch: Batch, chunk: int = 64) -> ResponseScores:
    """`score_responses` without gradients, `chunk` rows at a time (hidden states kept for value heads)."""
    n = len(batch["input_ids"])
    parts = [score_responses(model, {k: v[i : i + chunk] for k, v in batch.items()}) for i in range(0, n, chunk)]
    return ResponseScores(logprobs=torch.cat([p.logprobs for p in parts]), mask=torch.cat([p.mask for p in parts]),
                          hidden=torch.cat([p.hidden for p in parts]))


def frozen_reference(checkpoint: str) -> QwenImageModel:
    """A second copy of the starting policy, never trained: the KL anchor."""
    return QwenImageModel.from_pretrained(checkpoint).requires_grad_(False).eval()


def update_policy(trainer: Trainer | None, model: nn.Module, objective: Objective, train: TrainConfig,
                  dataset: Batch, total_steps: int, epochs: int, iteration: int) -> tuple[Trainer, dict[str, float]]:
    """`epochs` shuffled passes of minibatch steps of the Trainer over this iteration's rollouts.

    The Trainer (one optimizer and LR schedule for the whole run, made on the first call) gets the new
    rollouts as its dataset each iteration; returns it and the mean of the steps' metrics.
    """
    if trainer is None:
        trainer = Trainer(model, objective, dataclasses.replace(train, steps=total_steps), dataset)
    trainer.data = GlobalBatches(dataset, train.batch_size, seed=train.seed * 100_003 + iteration)
    steps = epochs * (len(dataset["input_ids"]) // train.batch_size)
    records = [trainer.train_step() for _ in range(steps)]
    done = [r for r in records if not r["skipped"]]
    names = [k for k in (done[0] if done else {}) if k not in ("step", "skipped", "samples", "tokens")]
    means = {name: sum(r[name] for r in done) / len(done) for name in names}
    return trainer, {**means, "skipped_steps": len(records) - len(done)}


class RunLog:
    """One JSON line per iteration in OUT_DIR/align_log.jsonl, and a progress bar with the key numbers."""

    def __init__(self, out_dir: Path, total: int, description: str):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / LOG_NAME
        self.path.unlink(missing_ok=True)
        self.records: list[dict] = []
        self.progress = progress_bar()
        self.task = self.progress.add_task(description, total=total, status="")

    def __enter__(self) -> "RunLog":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def write(self, record: dict, status_keys: tuple[str, ...]) -> None:
        self.records.append(record)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        status = " ".join(f"{k} {record[k]:.3f}" for k in status_keys if k in record)
        self.progress.update(self.task, advance=1, status=status)


def rollout_seed(seed: int, iteration: int, row: int) -> int:
    return (seed * 1_000_003 + iteration) * 100_003 + row


def prompt_batch(samples: list[Sample], n: int, iteration: int) -> list[Sample]:
    """The `n` prompts of an iteration: consecutive windows over the train samples, wrapping around."""
    start = iteration * n
    return [samples[(start + i) % len(samples)] for i in range(n)]


# --- the run ----------------------------------------------------------------------------------


def run_ppo(config: PPOConfig, on_iteration: Callable[[dict], None] | None = None) -> dict:
    """PPO from `config.checkpoint`; writes OUT_DIR/align_log.jsonl, OUT_DIR/checkpoint (the policy) and
    OUT_DIR/align.json, and returns the summary (reward, KL and held-out accuracy before and after)."""
    engine = load_engine(config.checkpoint)
    tokenizer = engine.tokenizer
    model = PolicyWithValue(engine.model)
    reference = frozen_reference(config.checkpoint)
    reward_model = RewardModel.from_pretrained(config.reward_model) if config.reward != "rule" else None
    train_samples = alignment_items(config.data, "train")
    held_out = alignment_items(config.data, "held_out")
    before = held_out_figures(engine, held_out, config.rollout)
    kl = KLController(config.kl)
    per_iteration = config.epochs * config.rollout.prompts // config.train.batch_size
    objective = PPOObjective(config)
    out = Path(config.out_dir)
    trainer = None
    started = time.perf_counter()
    with RunLog(out, config.iterations, "PPO") as log:
        for iteration in range(config.iterations):
            prompts = prompt_batch(train_samples, config.rollout.prompts, iteration)
            seeds = [rollout_seed(config.train.seed, iteration, row) for row in range(len(prompts))]
            rollouts = generate_rollouts(engine, prompts, config.rollout, seeds)
            batch = rollouts.batch
            scores = _answer_scores(config, rollouts.rewards, reward_model, batch)
            old = score_in_chunks(model.policy, batch)
            ref = score_in_chunks(reference, batch)
            with torch.no_grad():
                old_values = model.values(old.hidden) * old.mask
            rewards = token_rewards(scores, old.logprobs, ref.logprobs, old.mask, kl.value)
            advantages, returns = gae(rewards, old_values, old.mask, config.gamma, config.lam)
            dataset = {**batch, "old_logprobs": old.logprobs, "old_values": old_values,
                       "advantages": whiten(advantages, old.mask), "returns": returns}
            trainer, update = update_policy(trainer, model, objective, config.train, dataset,
                                            config.iterations * per_iteration, config.epochs, iteration)
            sequence_kl = ((old.logprobs - ref.logprobs) * old.mask).sum(dim=1)  # [N] nats per answer
            record = {"iteration": iteration + 1, "reward": scores.mean().item(),
                      "accuracy": rollouts.rewards.mean().item(), "kl": sequence_kl.mean().item(), "kl_coef": kl.value,
                      "response_tokens": old.mask.sum(dim=1).mean().item(), **update,
                      "seconds": round(time.perf_counter() - started, 2)}
            kl.update(record["kl"], len(prompts))
            log.write(record, ("reward", "kl", "entropy", "clip_fraction"))
            if on_iteration is not None:
                on_iteration(record)
    model.policy.save_pretrained(out / "checkpoint", tokenizer)
    return write_summary("ppo", out, log.records, before, held_out_figures(engine, held_out, config.rollout))


def _answer_scores(config: PPOConfig, correct: torch.Tensor, reward_model: RewardModel | None, batch: Batch
                   ) -> torch.Tensor:
    if reward_model is None:
        return correct
    with torch.no_grad():
        learned = torch.cat([reward_model({k: v[i : i + 64] for k, v in batch.items()})
                             for i in range(0, len(batch["input_ids"]), 64)])
    return learned + correct if config.reward == "rule+model" else learned


def held_out_figures(engine: Engine, held_out: list[Sample], rollout: RolloutConfig) -> dict[str, float]:
    """Greedy accuracy and mean sampled exact-answer reward on the held-out prompts."""
    return {"vqa_accuracy": answer_accuracy(engine, held_out, rollout.max_new_tokens),
            "reward": sampled_reward(engine, held_out, rollout, rollout.eval_samples)}


def write_summary(method: str, out: Path, records: list[dict], before: dict[str, float], after: dict[str, float]
                  ) -> dict:
    """The figures of a run, written to align.json: held-out accuracy and sampled reward before and after, and
    the training reward and KL of the first and last iterations (means over up to 3 iterations)."""
    window = max(1, min(3, len(records) // 2))

    def mean(key: str, part: list[dict]) -> float:
        return sum(r[key] for r in part) / len(part)

    summary = {
        "method": method,
        "iterations": len(records),
        "reward_first": mean("reward", records[:window]),
        "reward_last": mean("reward", records[-window:]),
        "kl_last": mean("kl", records[-window:]),
        "kl_max": max(r["kl"] for r in records),
        "vqa_accuracy_before": before["vqa_accuracy"],
        "vqa_accuracy_after": after["vqa_accuracy"],
        "held_out_reward_before": before["reward"],
        "held_out_reward_after": after["reward"],
        "checkpoint": str(out / "checkpoint"),
        "log": str(out / LOG_NAME),
        "seconds": records[-1]["seconds"],
    }
    (out / "align.json").write_text(json.dumps({**summary, "history": records}, indent=2), encoding="utf-8")
    return summary
