"""3-D shape recognition: train the point-cloud encoder with a linear head, score it held out.

A linear head on the encoder's global feature learns the classes of a labelled set of
clouds and is scored on held-out clouds. This is the check that the encoder's features
carry the geometry before its tokens go to the LM. Training runs on the shared
`Trainer` (warmup + cosine, clipping, logging), like every other run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vlstack.errors import DataError
from vlstack.models.pointcloud import PointCloudClassifier, PointCloudConfig
from vlstack.train.trainer import TrainConfig, Trainer


@dataclass
class ShapeClassificationConfig:
    """The encoder and its optimisation; the default encoder has the article's widths."""

    encoder: PointCloudConfig = field(default_factory=lambda: PointCloudConfig(num_points=256))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=300, batch_size=32, lr=5e-3, warmup_steps=30, weight_decay=0.0, precision="fp32", log_every=50,
        measure_mfu=False, tensorboard=False))
    seed: int = 0


@dataclass
class PointCloudSet:
    """Labelled clouds: `points` float [N, P, 3], `labels` long [N] indexing `classes`."""

    points: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.points.ndim != 3 or self.points.shape[-1] != 3 or len(self.points) != len(self.labels):
            raise DataError(f"a point-cloud set needs points [N, P, 3] and labels [N]; got {tuple(self.points.shape)} "
                            f"and {tuple(self.labels.shape)}")


def classification_objective(model: PointCloudClassifier, batch: dict[str, torch.Tensor]
                             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy of the class logits."""
    logits = model(batch["points"])
    accuracy = (logits.argmax(1) == batch["labels"]).float().mean().detach()
    return F.cross_entropy(logits, batch["labels"]), {"accuracy": accuracy}


def train_shape_classifier(train: PointCloudSet, test: PointCloudSet, config: ShapeClassificationConfig,
                           out_dir: str | Path | None = None) -> tuple[PointCloudClassifier, dict[str, Any]]:
    """Train on `train`, score on `test`; returns the model and its figures (held-out accuracy per class)."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    model = PointCloudClassifier(config.encoder, len(train.classes))
    trainer = Trainer(model, classification_objective, config.train,
                      {"points": train.points, "labels": train.labels},
                      out_dir=Path(out_dir) if out_dir is not None else None)
    history = trainer.fit("point-cloud shapes")
    model.eval()
    with torch.no_grad():
        predicted = model(test.points).argmax(dim=1)
    correct = predicted == test.labels
    per_class = {name: round(correct[test.labels == i].float().mean().item(), 4) for i, name in
                 enumerate(test.classes)}
    return model, {
        "test_accuracy": round(correct.float().mean().item(), 4),
        "chance": round(1 / len(test.classes), 4),
        "per_class": per_class,
        "final_train_loss": round(history[-1]["loss"], 4),
        "train_clouds": len(train.labels),
        "test_clouds": len(test.labels),
        "steps": trainer.step,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.perf_counter() - started, 2),
    }
