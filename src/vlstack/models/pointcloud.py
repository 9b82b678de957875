"""Point clouds as a third modality: farthest point sampling, a PointNet encoder, LM tokens.

The article's encoder: farthest point sampling (FPS) down to 1024 points, a shared MLP
3 -> 128 -> 256 -> 512 applied to every point, and a max pool over the points, which
makes the global feature independent of the order the points come in. For the
language model the encoder also gives local tokens: the features of the points
grouped around a few FPS centres (max-pooled over each centre's nearest neighbours,
plus an embedding of the centre's position). A projector maps [global ; local]
tokens to the LM width, and `embed_with_point_clouds` splices them into the LM input
at `<point>` placeholders, exactly as `QwenImageModel.embed_inputs` does for images.

Clouds are first centred, scaled into the unit ball and turned onto their principal
axes, so size, position and orientation need not be learned. FPS starts from the
point farthest from the centroid (unless told a start index), so the sampled set,
and with it every output, does not depend on the input order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from vlstack.errors import InputError
from vlstack.models.layers import MLP
from vlstack.models.vlm import QwenImageModel, splice_features

POINT = "<point>"
"""The placeholder of one point cloud in a prompt; expanded to `PointCloudTower.num_tokens` slots."""


@dataclass
class PointCloudConfig:
    """The article's PointNet-style encoder (FPS to 1024 points, shared MLP 3 -> 128 -> 256 -> 512, max pool)."""

    num_points: int = 1024
    """Clouds with more points are reduced to this many by FPS; smaller clouds are used whole."""
    widths: tuple[int, ...] = (128, 256, 512)
    """Output width of each shared-MLP layer; the last one is the feature width."""
    num_tokens: int = 16
    """Local tokens for the LM: one per FPS centre (the LM gets these plus one global token)."""
    group_size: int = 32
    """Nearest sampled points max-pooled into each local token."""
    normalize: bool = True
    """Centre each cloud on its centroid and scale it into the unit ball first (size-free)."""
    principal_axes: bool = True
    """Also rotate each cloud onto its principal axes (signs fixed by the skew along each axis), so a
    shape's orientation need not be learned; the frame of a nearly isotropic cloud (sphere, cube) is
    arbitrary, and the encoder learns those in any orientation."""


def farthest_point_sample(points: torch.Tensor, k: int, start: int | torch.Tensor | None = None) -> torch.Tensor:
    """Indices [B, k] of `k` points of each cloud [B, N, 3], each the farthest from those before it.

    `start` is the first index (an int for every cloud or a [B] tensor); None starts at the
    point farthest from the centroid, which does not depend on the order of the points.
    """
    if points.ndim != 3 or points.shape[-1] != 3:
        raise InputError(f"points must be [batch, n, 3]; got {tuple(points.shape)}")
    batch, n, _ = points.shape
    if not 0 < k <= n:
        raise InputError(f"cannot sample {k} of {n} points; k must be in [1, {n}]")
    rows = torch.arange(batch, device=points.device)
    if start is None:
        current = (points - points.mean(dim=1, keepdim=True)).square().sum(-1).argmax(dim=1)  # [B]
    else:
        current = torch.as_tensor(start, device=points.device).expand(batch).clone()
    chosen = torch.empty(batch, k, dtype=torch.long, device=points.device)
    nearest = torch.full((batch, n), float("inf"), device=points.device)  # squared distance to the chosen set
    for i in range(k):
        chosen[:, i] = current
        distance = (points - points[rows, current][:, None]).square().sum(-1)  # [B, N]
        nearest = torch.minimum(nearest, distance)
        current = nearest.argmax(dim=1)
    return chosen


def gather_points(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values [B, N, C], index [B, ...] -> [B, ..., C]."""
    flat = index.reshape(index.shape[0], -1)  # [B, M]
    picked = values.gather(1, flat[..., None].expand(-1, -1, values.shape[-1]))  # [B, M, C]
    return picked.reshape(*index.shape, values.shape[-1])


@dataclass
class PointFeatures:
    global_feature: torch.Tensor  # [B, D] max over all sampled points
    tokens: torch.Tensor  # [B, 1 + K, D] global token, then one per FPS centre
    centres: torch.Tensor  # [B, K, 3] the centres of the local tokens (normalised coordinates)


class PointCloudEncoder(nn.Module):
    def __init__(self, config: PointCloudConfig | None = None):
        super().__init__()
        self.config = config or PointCloudConfig()
        layers: list[nn.Module] = []
        width = 3
        for out in self.config.widths:  # Linear on [B, N, C] = a 1x1 Conv1d shared by every point
            layers += [nn.Linear(width, out), nn.LayerNorm(out), nn.GELU()]
            width = out
        self.shared_mlp = nn.Sequential(*layers)
        self.width = width
        self.position = nn.Linear(3, width)  # where a local token's centre is

    def forward(self, points: torch.Tensor) -> PointFeatures:
        cfg = self.config
        if points.ndim != 3 or points.shape[-1] != 3:
            raise InputError(f"points must be [batch, n, 3]; got {tuple(points.shape)}")
        if cfg.normalize:
            points = normalize_clouds(points, cfg.principal_axes)
        if points.shape[1] > cfg.num_points:  # FPS of all N would pick the same set, in another order
            points = gather_points(points, farthest_point_sample(points, cfg.num_points))  # [B, M, 3]
        features = self.shared_mlp(points)  # [B, M, D]
        k = min(cfg.num_tokens, points.shape[1])
        centres = gather_points(points, farthest_point_sample(points, k))  # [B, K, 3]
        group = min(cfg.group_size, points.shape[1])
        neighbours = torch.cdist(centres, points).topk(group, dim=-1, largest=False).indices  # [B, K, G]
        local = gather_points(features, neighbours).amax(dim=2) + self.position(centres)  # [B, K, D]
        global_feature = features.amax(dim=1)  # [B, D]
        return PointFeatures(global_feature, torch.cat([global_feature[:, None], local], dim=1), centres)


def normalize_clouds(points: torch.Tensor, principal_axes: bool = False) -> torch.Tensor:
    """Centre each cloud [B, N, 3] on its centroid and scale it so its farthest point is at radius 1;
    with `principal_axes`, express it in the eigenbasis of its covariance (smallest variance first),
    each axis pointing where the cloud's third moment is positive."""
    centred = points - points.mean(dim=1, keepdim=True)
    radius = centred.norm(dim=-1).amax(dim=1).clamp(min=1e-8)  # [B]
    scaled = centred / radius[:, None, None]
    if not principal_axes:
        return scaled
    covariance = scaled.transpose(1, 2) @ scaled / scaled.shape[1]  # [B, 3, 3]
    _, axes = torch.linalg.eigh(covariance)  # [B, 3, 3], columns in ascending variance
    rotated = scaled @ axes  # [B, N, 3]
    sign = torch.where(rotated.pow(3).sum(dim=1, keepdim=True) < 0, -1.0, 1.0)  # [B, 1, 3]
    return rotated * sign


class PointCloudClassifier(nn.Module):
    """A linear head on the encoder's global feature: the shape-classification probe."""

    def __init__(self, config: PointCloudConfig, num_classes: int):
        super().__init__()
        self.encoder = PointCloudEncoder(config)
        self.head = nn.Linear(self.encoder.width, num_classes)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """[B, N, 3] -> logits [B, classes]."""
        return self.head(self.encoder(points).global_feature)


class PointCloudTower(nn.Module):
    """Encoder + projector: point clouds -> tokens in the LM's embedding space."""

    def __init__(self, config: PointCloudConfig, lm_width: int):
        super().__init__()
        self.encoder = PointCloudEncoder(config)
        self.projector = MLP(self.encoder.width, lm_width, out_dim=lm_width)

    @property
    def num_tokens(self) -> int:
        """`<point>` slots one cloud takes in the LM input (clouds of >= num_tokens points)."""
        return 1 + self.encoder.config.num_tokens

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """[B, N, 3] -> [B, 1 + K, Dt]."""
        return self.projector(self.encoder(points).tokens)


def add_point_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Register `<point>` as a special token (if missing) and return its id.

    The id may lie past the LM's embedding table: placeholder slots are never looked up,
    they are filled with projected point tokens.
    """
    if POINT not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [POINT]}, replace_extra_special_tokens=False)
    return tokenizer.convert_tokens_to_ids(POINT)


def embed_with_point_clouds(
    model: QwenImageModel,
    tower: PointCloudTower,
    input_ids: torch.Tensor,
    points: torch.Tensor,
    point_token_id: int,
    pixel_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """LM input embeddings [B, T, Dt] with text, images at `<image>` and point clouds at `<point>` slots.

    `input_ids` must hold `tower.num_tokens` copies of the `<point>` id per cloud (in the
    order of `points` [N_clouds, N, 3]); expand them with `expand_image_placeholders`.
    """
    is_point = input_ids == point_token_id
    embeds = model.embed_inputs(input_ids.masked_fill(is_point, 0), pixel_values)  # [B, T, Dt]
    return splice_features(embeds, is_point, tower(points), POINT, "point cloud")
