"""The reward model: the VLM backbone with a scalar head, trained with the Bradley–Terry loss on pairs.

The score of (image, question, answer) is a linear head on the language model's hidden state at the
last real token (the `<|im_end|>` that closes the answer), which has attended to the image and to the
whole text. Bradley–Terry: p(chosen > rejected) = sigmoid(r_chosen - r_rejected), so the loss is
-log sigmoid(r_chosen - r_rejected). A saved reward model is a checkpoint directory whose backbone
files load like any other (`checkpoint.load_model`), plus `reward_head.safetensors`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from vlstack import checkpoint
from vlstack.align.logprobs import Batch, lm_hidden, load_engine, on_model_device
from vlstack.align.preference import PreferenceDataConfig, flatten_pairs, preference_data
from vlstack.collectives import main_rank_result
from vlstack.errors import CheckpointError
from vlstack.models.vlm import QwenImageModel
from vlstack.train.distributed import init_distributed
from vlstack.train.trainer import TrainConfig, Trainer, resume_from

HEAD_NAME = "reward_head.safetensors"


def scalar_head(width: int) -> nn.Linear:
    """A Linear(width -> 1) on LM hidden states (reward and value heads), initialised so the first
    scores are small: std 1/sqrt(width + 1), zero bias."""
    head = nn.Linear(width, 1)
    nn.init.normal_(head.weight, std=1 / math.sqrt(width + 1))
    nn.init.zeros_(head.bias)
    return head


class RewardModel(nn.Module):
    def __init__(self, backbone: QwenImageModel):
        super().__init__()
        self.backbone = backbone
        self.head = scalar_head(backbone.config.language.hidden_size)

    def transformer_blocks(self) -> list[nn.Module]:
        return self.backbone.transformer_blocks()

    def forward(self, batch: Batch) -> torch.Tensor:
        """Scores [B] of right-padded rows (`input_ids`, `attention_mask`, `pixel_values`)."""
        batch = on_model_device(batch, self)
        hidden = lm_hidden(self.backbone, batch)  # [B, T, D]
        last = batch["attention_mask"].long().sum(dim=1) - 1  # [B]
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [B, D]
        return self.head(pooled).squeeze(-1).float()  # [B]


def save_reward_model(model: RewardModel, directory: str | Path, tokenizer=None) -> None:
    with checkpoint.atomic_directory(directory) as tmp:
        write_reward_model_files(model, tmp, tokenizer)


def write_reward_model_files(model: RewardModel, directory: Path, tokenizer=None,
                             state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """The backbone's checkpoint files plus the head; `state_dict` (keys `backbone.*`, `head.*`) replaces
    the model's own weights, as for `checkpoint.write_model_files`."""
    state = model.state_dict() if state_dict is None else state_dict
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    head = {k.removeprefix("head."): v.contiguous() for k, v in state.items() if k.startswith("head.")}
    checkpoint.write_model_files(model.backbone, directory, tokenizer, backbone)
    save_file(head, str(directory / HEAD_NAME))


def load_reward_model(directory: str | Path) -> RewardModel:
    directory = Path(directory)
    head_path = directory / HEAD_NAME
    if not head_path.is_file():
        raise CheckpointError(f"{directory} is not a reward model (no {HEAD_NAME}); train one with "
                              "`vlstack align --method reward`")
    model = RewardModel(checkpoint.load_model(directory))
    try:
        head = load_file(str(head_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{head_path} is not a readable safetensors file ({exc})") from exc
    try:
        model.head.load_state_dict(head)
    except RuntimeError as exc:
        raise CheckpointError(f"{head_path} does not fit the backbone in {directory}: {exc}") from exc
    return model.eval()


def reward_objective(model: RewardModel, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley–Terry loss on a batch of pairs ([B, 2, T] rows, chosen first)."""
    chosen, rejected = model(flatten_pairs(batch)).chunk(2)  # [B] each
    margin = chosen - rejected
    loss = -F.logsigmoid(margin).mean()
    return loss, {"pair_accuracy": (margin > 0).float().mean().detach(), "margin": margin.mean().detach()}


@torch.no_grad()
def pair_accuracy(model: RewardModel, pairs: Batch, batch_size: int = 64) -> float:
    """Share of pairs whose chosen response scores above the rejected one (chance: 0.5)."""
    model.eval()
    n = len(pairs["input_ids"])
    correct = 0
    for start in range(0, n, batch_size):
        chosen, rejected = model(flatten_pairs({k: v[start : start + batch_size] for k, v in pairs.items()})).chunk(2)
        correct += int((chosen > rejected).sum())
    return correct / n


@dataclass
class RewardConfig:
    """Reward-model training: start from a checkpoint's backbone, learn correct > wrong answers."""

    checkpoint: str | None = None
    """The checkpoint (normally the SFT one) whose backbone the reward model starts from."""
    out_dir: str = "runs/reward"
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=200, batch_size=16, lr=1e-4, warmup_steps=10, precision="fp32", log_every=10, measure_mfu=False,
        tensorboard=False))


def train_reward_model(config: RewardConfig, resume: bool = False, trust: bool = False) -> dict:
    """Train on pairs from the train split, report held-out pair accuracy; writes OUT_DIR/reward.json and a
    reward model at OUT_DIR/checkpoint (loadable with `load_reward_model`). Under torchrun every rank holds the
    pairs; the held-out figures are the main rank's."""
    dist_info = init_distributed(config.train.parallel.mode, config.train.device)
    engine = load_engine(config.checkpoint, dist_info.device)
    torch.manual_seed(config.train.seed)  # the head's init, alike on every rank
    model = RewardModel(engine.model).to(dist_info.device)
    train = preference_data(engine, config.data, "train")
    if dist_info.is_main:
        held_out = preference_data(engine, config.data, "held_out")
        before = pair_accuracy(model, held_out)
    out = Path(config.out_dir)
    trainer = Trainer(model, reward_objective, config.train, train, out_dir=out, dist_info=dist_info,
                      export=lambda directory, state: write_reward_model_files(model, directory, engine.tokenizer, state))
    resume_from(trainer, resume, trust)
    history = trainer.fit("reward model")
    if trainer.step < config.train.steps:
        return {"method": "reward", "status": "interrupted", "step": trainer.step,
                "checkpoint": str(trainer.checkpoint_dir)}

    def results() -> dict:
        trained = model
        if config.train.parallel.shards_weights:
            trained = load_reward_model(trainer.checkpoint_dir).to(dist_info.device)
        return {
            "pair_accuracy_before": before,
            "pair_accuracy": pair_accuracy(trained, held_out),
            "chance": 0.5,
            "held_out_pairs": len(held_out["input_ids"]),
            "steps": trainer.step,
            "history": history,
            "checkpoint": str(trainer.checkpoint_dir),
        }

    return main_rank_result(out / "reward.json", results)
