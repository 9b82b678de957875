import copy

import numpy as np
import pytest
import torch

from vlstack.errors import InputError
from vlstack.models.pointcloud import (
    POINT,
    PointCloudConfig,
    PointCloudEncoder,
    PointCloudTower,
    add_point_token,
    embed_with_point_clouds,
    farthest_point_sample,
    normalize_clouds,
)
from vlstack.models.tokenizer import IMAGE, expand_image_placeholders, special_token_ids

SMALL = PointCloudConfig(num_points=64, widths=(16, 32, 48), num_tokens=6, group_size=8)


def _brute_force_fps(points: np.ndarray, k: int, start: int) -> list[int]:
    """The textbook definition, one point at a time: the next point maximises its distance to the chosen set."""
    chosen = [start]
    while len(chosen) < k:
        gaps = [min(np.sum((p - points[c]) ** 2) for c in chosen) for p in points]
        chosen.append(int(np.argmax(gaps)))
    return chosen


def test_fps_equals_a_brute_force_reference():
    torch.manual_seed(0)
    points = torch.randn(3, 50, 3)
    starts = torch.tensor([0, 7, 49])
    got = farthest_point_sample(points, 12, starts)
    for b in range(3):
        assert got[b].tolist() == _brute_force_fps(points[b].double().numpy(), 12, int(starts[b]))
    assert torch.equal(farthest_point_sample(points, 12, 5)[:, 0], torch.full((3,), 5))


def test_fps_default_start_is_the_point_farthest_from_the_centroid_and_spreads_out():
    torch.manual_seed(1)
    points = torch.randn(1, 200, 3)
    points[0, 123] = torch.tensor([9.0, 0.0, 0.0])
    index = farthest_point_sample(points, 8)
    assert index[0, 0] == 123
    assert len(set(index[0].tolist())) == 8
    # FPS's chosen points are farther apart than the first 8 points in storage order
    chosen = points[0, index[0]]
    first = points[0, :8]
    assert torch.pdist(chosen).min() > torch.pdist(first).min()


def test_fps_rejects_bad_shapes_and_counts():
    with pytest.raises(InputError, match="\\[batch, n, 3\\]"):
        farthest_point_sample(torch.randn(10, 3), 4)
    with pytest.raises(InputError, match="cannot sample 11 of 10 points"):
        farthest_point_sample(torch.randn(1, 10, 3), 11)


def test_encoder_is_invariant_to_point_order():
    torch.manual_seed(2)
    encoder = PointCloudEncoder(SMALL).eval()
    points = torch.randn(2, 300, 3) * torch.tensor([2.0, 1.0, 0.5])  # > num_points: FPS runs
    shuffled = points[:, torch.randperm(300)]
    with torch.no_grad():
        a, b = encoder(points), encoder(shuffled)
    assert torch.allclose(a.global_feature, b.global_feature, atol=1e-5)
    assert torch.allclose(a.tokens, b.tokens, atol=1e-5)
    assert a.tokens.shape == (2, 1 + 6, 48) and a.global_feature.shape == (2, 48)


def test_encoder_outputs_depend_on_the_points_and_the_seed_sizes_are_the_default():
    assert PointCloudConfig().num_points == 1024 and PointCloudConfig().widths == (128, 256, 512)
    torch.manual_seed(3)
    encoder = PointCloudEncoder(SMALL).eval()
    with torch.no_grad():
        out = encoder(torch.randn(2, 64, 3) * torch.tensor([[[1.0, 1.0, 1.0]], [[3.0, 1.0, 0.2]]]))
    assert not torch.allclose(out.global_feature[0], out.global_feature[1], atol=1e-3)


def test_normalisation_removes_position_scale_and_rotation():
    torch.manual_seed(4)
    points = torch.randn(1, 500, 3) * torch.tensor([3.0, 1.0, 0.3]) + torch.tensor([0.2, 0.0, 0.5])
    points[0, :, 0] += points[0, :, 0].square() * 0.2  # skewed along the long axis: signs are defined
    rotation, _ = torch.linalg.qr(torch.randn(3, 3))
    moved = (points @ rotation.T) * 2.5 + torch.tensor([10.0, -4.0, 7.0])
    a, b = normalize_clouds(points, principal_axes=True), normalize_clouds(moved, principal_axes=True)
    assert torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(a.norm(dim=-1).amax(), torch.tensor(1.0))
    assert a[0].var(dim=0).argmax() == 2  # the longest axis is last (ascending variance)


def test_point_tokens_splice_into_lm_embeddings_at_the_placeholder(nano_model, tokenizer):
    tokenizer = copy.deepcopy(tokenizer)  # the fixture is shared: leave its vocabulary alone
    point_id = add_point_token(tokenizer)
    assert add_point_token(tokenizer) == point_id  # idempotent
    torch.manual_seed(5)
    tower = PointCloudTower(SMALL, nano_model.config.language.hidden_size).eval()
    ids = tokenizer(f"{POINT}\nwhat shape is this?", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([expand_image_placeholders(ids, point_id, tower.num_tokens)])
    points = torch.randn(1, 100, 3)
    with torch.no_grad():
        embeds = embed_with_point_clouds(nano_model, tower, ids, points, point_id)
        expected_points = tower(points)[0]
        text = nano_model.language_model.get_input_embeddings()(ids.masked_fill(ids == point_id, 0))[0]
    slots = ids[0] == point_id
    assert int(slots.sum()) == tower.num_tokens == 7
    assert torch.equal(embeds[0, slots], expected_points)
    assert torch.equal(embeds[0, ~slots], text[~slots])
    with pytest.raises(InputError, match="2 point cloud\\(s\\) need 2 x 7 <point> tokens, the text has 7"):
        embed_with_point_clouds(nano_model, tower, ids, torch.randn(2, 100, 3), point_id)


def test_point_clouds_and_images_share_one_prompt(nano_model, tokenizer):
    tokenizer = copy.deepcopy(tokenizer)
    point_id, image_id = add_point_token(tokenizer), special_token_ids(tokenizer).image
    tower = PointCloudTower(SMALL, nano_model.config.language.hidden_size).eval()
    ids = tokenizer(f"{IMAGE} and {POINT}: same shape?", add_special_tokens=False)["input_ids"]
    ids = expand_image_placeholders(ids, image_id, nano_model.num_image_tokens())
    ids = torch.tensor([expand_image_placeholders(ids, point_id, tower.num_tokens)])
    pixels, points = torch.randn(1, 3, 32, 32), torch.randn(1, 80, 3)
    with torch.no_grad():
        embeds = embed_with_point_clouds(nano_model, tower, ids, points, point_id, pixel_values=pixels)
        images_only = nano_model.embed_inputs(ids.masked_fill(ids == point_id, 0), pixels)
    assert torch.equal(embeds[0, ids[0] == point_id], tower(points)[0])
    assert torch.equal(embeds[0, ids[0] != point_id], images_only[0, ids[0] != point_id])
