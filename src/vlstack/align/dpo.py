"""Direct Preference Optimization (Rafailov et al. 2023) as an objective for the Trainer.

With log-ratios against a frozen reference, rho = log pi(y|x) - log pi_ref(y|x), the sigmoid loss of
one pair is -log sigmoid(beta * (rho_chosen - rho_rejected)), the loss TRL's DPOTrainer computes for
`loss_type="sigmoid"`. The reference is the starting policy, frozen; its log-probabilities of the fixed
pairs are computed once before training (as TRL's `precompute_ref_log_probs`), which gives the same
numbers as scoring every batch with it, without holding a second model during training.

DPO only asks the chosen answer to gain on the rejected one, and both can lose likelihood at once, so
greedy answers can get worse while the margin grows. `sft_weight` adds the chosen answers' mean token
negative log-likelihood (TRL's `sft` loss term, as in RPO, Pang et al. 2024), which keeps them likely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from vlstack.align.logprobs import Batch, load_engine, score_responses, trained_engine
from vlstack.align.preference import (
    PreferenceDataConfig,
    alignment_items,
    answer_accuracy,
    flatten_pairs,
    preference_data,
)
from vlstack.checkpoint import write_model_files
from vlstack.collectives import global_weighted_mean, main_rank_result
from vlstack.errors import ConfigError
from vlstack.models.vlm import QwenImageModel
from vlstack.progress import progress_bar
from vlstack.train.distributed import init_distributed
from vlstack.train.trainer import TrainConfig, Trainer, resume_from


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair sigmoid DPO losses [B] and the implicit rewards beta * rho of the chosen and rejected [B]."""
    chosen_rewards = beta * (chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(chosen_rewards - rejected_rewards), chosen_rewards, rejected_rewards


class DPOObjective:
    """`loss(policy, batch)` on pairs ([B, 2, T] rows, chosen first) with `ref_logps` [B, 2]: the sigmoid
    DPO loss, plus `sft_weight` x the chosen answers' mean token NLL."""

    def __init__(self, beta: float, sft_weight: float = 0.0):
        self.beta = beta
        self.sft_weight = sft_weight

    def __call__(self, model: QwenImageModel, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scores = score_responses(model, flatten_pairs(batch))
        chosen, rejected = scores.sequence_logprobs().chunk(2)  # [B] each
        ref = batch["ref_logps"]
        losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], self.beta)
        margin = chosen_rewards - rejected_rewards
        metrics = {"reward_chosen": chosen_rewards.mean().detach(), "reward_rejected": rejected_rewards.mean().detach(),
                   "reward_margin": margin.mean().detach(), "reward_accuracy": (margin > 0).float().mean().detach()}
        loss = losses.mean()
        if self.sft_weight:
            pairs = len(chosen)
            chosen_nll = -global_weighted_mean(scores.logprobs[:pairs], scores.mask[:pairs])
            loss = loss + self.sft_weight * chosen_nll
            metrics["chosen_nll"] = chosen_nll.detach()
        return loss, metrics


@torch.no_grad()
def pair_logps(model: QwenImageModel, pairs: Batch, batch_size: int = 64) -> torch.Tensor:
    """log pi(chosen), log pi(rejected) of every pair [N, 2] under `model` (the reference, before training)."""
    model.eval()
    out = []
    with progress_bar(transient=True) as progress:
        for start in progress.track(range(0, len(pairs["input_ids"]), batch_size), description="reference log-probs"):
            chunk = {k: v[start : start + batch_size] for k, v in pairs.items()}
            out.append(score_responses(model, flatten_pairs(chunk)).sequence_logprobs().view(2, -1).t().cpu())
    return torch.cat(out)


@dataclass
class DPOConfig:
    """DPO on synthetic VQA pairs: the correct answer chosen, a wrong one of the same kind rejected."""

    checkpoint: str | None = None
    """The starting policy (normally the SFT checkpoint); a frozen copy is the reference."""
    out_dir: str = "runs/align-dpo"
    beta: float = 0.1
    """Strength of the implicit KL constraint (TRL's default 0.1); higher stays closer to the reference."""
    sft_weight: float = 0.0
    """Weight of the chosen answers' mean token NLL added to the DPO loss (TRL: `loss_type=["sigmoid", "sft"]`,
    `loss_weights=[1, sft_weight]`); 0 is plain DPO."""
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=100, batch_size=16, lr=5e-5, warmup_steps=10, precision="fp32", log_every=10, measure_mfu=False,
        tensorboard=False))
    max_new_tokens: int = 8
    """Answer budget when measuring held-out accuracy."""

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"beta must be positive, got {self.beta}")
        if self.sft_weight < 0:
            raise ConfigError(f"sft_weight must be 0 (plain DPO) or positive, got {self.sft_weight}")


def run_dpo(config: DPOConfig, resume: bool = False, trust: bool = False) -> dict:
    """Train with DPO; report held-out accuracy and implicit-reward accuracy before and after.

    Writes OUT_DIR/train_log.jsonl, OUT_DIR/checkpoint (the aligned policy) and OUT_DIR/align.json; with
    `resume`, an interrupted run continues from OUT_DIR/checkpoint exactly. Under torchrun every rank holds the
    pairs and their reference log-probabilities (the reference is the starting policy, scored once before
    training); the held-out figures are the main rank's.
    """
    dist_info = init_distributed(config.train.parallel.mode, config.train.device)
    engine = load_engine(config.checkpoint, dist_info.device)
    policy = engine.model
    train_pairs = preference_data(engine, config.data, "train")
    train_pairs["ref_logps"] = pair_logps(policy, train_pairs)
    if dist_info.is_main:
        held_out_pairs = preference_data(engine, config.data, "held_out")
        held_out = alignment_items(config.data, "held_out")
        held_out_ref = pair_logps(policy, held_out_pairs)
        before = answer_accuracy(engine, held_out, config.max_new_tokens)

    out = Path(config.out_dir)
    trainer = Trainer(policy, DPOObjective(config.beta, config.sft_weight), config.train, train_pairs, out_dir=out,
                      export=lambda directory, state: write_model_files(policy, directory, engine.tokenizer, state),
                      dist_info=dist_info)
    resume_from(trainer, resume, trust)
    history = trainer.fit("DPO")
    if trainer.step < config.train.steps:
        return {"method": "dpo", "status": "interrupted", "step": trainer.step, "checkpoint": str(trainer.checkpoint_dir)}

    def results() -> dict:
        after = trained_engine(engine, trainer.checkpoint_dir, config.train.parallel.shards_weights)
        margins = config.beta * ((pair_logps(after.model, held_out_pairs) - held_out_ref) @ torch.tensor([1.0, -1.0]))
        return {
            "method": "dpo",
            "vqa_accuracy_before": before,
            "vqa_accuracy_after": answer_accuracy(after, held_out, config.max_new_tokens),
            "held_out_reward_accuracy": (margins > 0).float().mean().item(),
            "held_out_reward_margin": margins.mean().item(),
            "steps": trainer.step,
            "history": history,
            "checkpoint": str(trainer.checkpoint_dir),
        }

    return main_rank_result(out / "align.json", results)
