"""3-D shape recognition: train the point-cloud encoder on synthetic clouds, score it held out.

A linear probe on the encoder's global feature learns the five synthetic shapes
(sphere, cube, cylinder, cone, torus; randomly rotated, scaled, shifted and noisy)
and is scored on the held-out test split, where chance is 1/5. This is the check
that the encoder's features carry the geometry before its tokens go to the LM.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from vlstack.synthetic.pointclouds import POINT_SHAPES, point_cloud_tensors, point_clouds
from vlstack.models.pointcloud import PointCloudClassifier, PointCloudConfig
from vlstack.progress import progress_bar


@dataclass
class ShapeClassificationConfig:
    """A short AdamW run of PointCloudClassifier; the defaults are the seed's encoder widths."""

    train_clouds: int = 1000
    test_clouds: int = 200
    """Clouds of the held-out `test` split (every shape equally often)."""
    cloud_points: int = 1024
    """Points generated per cloud; the encoder reduces them to encoder.num_points by FPS."""
    noise: float = 0.01
    encoder: PointCloudConfig = field(default_factory=lambda: PointCloudConfig(num_points=256))
    steps: int = 300
    batch_size: int = 32
    lr: float = 5e-3
    seed: int = 0

    @classmethod
    def quick(cls) -> ShapeClassificationConfig:
        """A few seconds on one CPU core: small clouds and a narrow encoder."""
        return cls(train_clouds=1000, cloud_points=128, steps=200,
                   encoder=PointCloudConfig(num_points=128, widths=(32, 64, 128), num_tokens=4, group_size=8))


def train_shape_classifier(config: ShapeClassificationConfig) -> tuple[PointCloudClassifier, dict[str, Any]]:
    """Train on the `train` split, score on `test`; returns the model and its figures."""
    started = time.perf_counter()
    clouds = {"num_points": config.cloud_points, "noise": config.noise}
    train_points, train_labels = point_cloud_tensors(point_clouds(config.train_clouds, config.seed, "train", **clouds))
    test_points, test_labels = point_cloud_tensors(point_clouds(config.test_clouds, config.seed, "test", **clouds))
    torch.manual_seed(config.seed)
    model = PointCloudClassifier(config.encoder, len(POINT_SHAPES))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps,
                                                   pct_start=0.1)
    batches = torch.Generator().manual_seed(config.seed)
    model.train()
    with progress_bar() as progress:
        task = progress.add_task("point-cloud shapes", total=config.steps)
        for _ in range(config.steps):
            rows = torch.randint(0, len(train_labels), (config.batch_size,), generator=batches)
            loss = F.cross_entropy(model(train_points[rows]), train_labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            progress.update(task, advance=1, status=f"loss {loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        predicted = model(test_points).argmax(dim=1)
    correct = predicted == test_labels
    per_class = {shape: round(correct[test_labels == i].float().mean().item(), 4) for i, shape in
                 enumerate(POINT_SHAPES)}
    return model, {
        "test_accuracy": round(correct.float().mean().item(), 4),
        "chance": round(1 / len(POINT_SHAPES), 4),
        "per_class": per_class,
        "final_train_loss": round(loss.item(), 4),
        "train_clouds": config.train_clouds,
        "test_clouds": config.test_clouds,
        "steps": config.steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.perf_counter() - started, 2),
    }


def shape_classification(config: ShapeClassificationConfig | None = None) -> dict[str, Any]:
    """The demo's figures: held-out accuracy of a briefly trained encoder on the five shapes."""
    return train_shape_classifier(config or ShapeClassificationConfig())[1]
