import pytest
import torch

from vlstack.errors import ConfigError, InputError
from vlstack.models.config import VisionConfig
from vlstack.models.layers import SelfAttention
from vlstack.models.vision import DynamicPositionEmbedding, HierarchicalAttention, VisionTransformer


def _vit(**overrides) -> VisionTransformer:
    torch.manual_seed(0)
    cfg = VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=4, window_size=2,
                       global_every=2, num_prompts=3)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return VisionTransformer(cfg).eval()


def test_shapes_and_block_kinds():
    vit = _vit()
    tokens = vit(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 3 + 16, 32)
    assert vit.pool(tokens).shape == (2, 32)
    kinds = [type(b.attn).__name__ for b in vit.blocks]
    assert kinds == ["HierarchicalAttention", "GlobalAttention"]


@pytest.mark.parametrize("size", [(48, 48), (24, 40), (56, 32)])
def test_any_resolution_interpolates_the_position_table(size):
    vit = _vit()
    tokens = vit(torch.randn(1, 3, *size))
    assert tokens.shape == (1, 3 + (size[0] // 8) * (size[1] // 8), 32)
    assert torch.isfinite(tokens).all()


def test_position_interpolation_to_the_same_grid_is_identity_and_resizes_smoothly():
    pos = DynamicPositionEmbedding(width=8, grid=4)
    with torch.no_grad():
        # a table that is linear in the column index is preserved by interpolation to more columns
        cols = torch.arange(4.0).repeat(4)  # row-major grid: value = column index
        pos.table.copy_(cols[None, :, None].expand(1, 16, 8))
        pos.conv.weight.zero_()
        pos.conv.weight[:, :, 1] = torch.eye(8)  # conv = identity
        pos.conv.bias.zero_()
    same = pos((4, 4))
    assert torch.allclose(same, pos.table)
    wide = pos((4, 8)).reshape(4, 8, 8)[..., 0]
    assert wide.shape == (4, 8)
    assert torch.all(wide[:, 1:] >= wide[:, :-1] - 1e-5)  # columns still increase left to right
    assert torch.allclose(wide[0], wide[3])  # rows unchanged


def test_window_stage_equals_attention_run_on_each_window_separately():
    torch.manual_seed(0)
    attn = HierarchicalAttention(width=16, heads=2, window_size=2, num_prompts=0).eval()
    patches = torch.randn(2, 4 * 4, 16)
    out = attn.window_stage(patches, (4, 4))
    grid = patches.reshape(2, 4, 4, 16)
    for r in range(0, 4, 2):
        for c in range(0, 4, 2):
            window = grid[:, r : r + 2, c : c + 2].reshape(2, 4, 16)
            expected = attn.window_attn(window).reshape(2, 2, 2, 16)
            got = out.reshape(2, 4, 4, 16)[:, r : r + 2, c : c + 2]
            assert torch.allclose(got, expected, atol=1e-5)


def test_window_covering_the_grid_is_global_attention():
    torch.manual_seed(0)
    attn = HierarchicalAttention(width=16, heads=2, window_size=4, num_prompts=0).eval()
    patches = torch.randn(2, 16, 16)
    assert torch.allclose(attn.window_stage(patches, (4, 4)), attn.window_attn(patches), atol=1e-5)


def test_padded_windows_ignore_padding():
    """A 3x3 grid in 2x2 windows is padded to 4x4; padding must not change real tokens."""
    torch.manual_seed(0)
    attn = HierarchicalAttention(width=16, heads=2, window_size=2, num_prompts=0).eval()
    patches = torch.randn(1, 9, 16)
    out = attn.window_stage(patches, (3, 3)).reshape(3, 3, 16)
    corner = patches.reshape(3, 3, 16)[2:, 2:].reshape(1, 1, 16)  # the window holding only (2, 2)
    assert torch.allclose(out[2, 2], attn.window_attn(corner)[0, 0], atol=1e-5)
    right = patches.reshape(3, 3, 16)[:2, 2:].reshape(1, 2, 16)  # (0,2) and (1,2), no padding seen
    assert torch.allclose(out[:2, 2], attn.window_attn(right)[0], atol=1e-5)


def test_prompts_skip_windows_but_join_global_attention():
    torch.manual_seed(0)
    attn = HierarchicalAttention(width=16, heads=2, window_size=2, num_prompts=2).eval()
    x = torch.randn(1, 2 + 16, 16)
    expected_input = torch.cat([x[:, :2], x[:, 2:] + attn.window_stage(x[:, 2:], (4, 4))], dim=1)
    assert torch.allclose(attn(x, (4, 4)), attn.global_attn(expected_input), atol=1e-5)


def test_self_attention_mask_blocks_keys():
    torch.manual_seed(0)
    attn = SelfAttention(8, 2).eval()
    x = torch.randn(1, 4, 8)
    mask = torch.tensor([True, True, False, False])[None, None, None, :]
    changed = x.clone()
    changed[:, 2:] = 100.0
    assert torch.allclose(attn(x, mask)[:, :2], attn(changed, mask)[:, :2], atol=1e-5)


@pytest.mark.parametrize("pixels, fragment", [
    (torch.randn(2, 1, 32, 32), "Convert grayscale"),
    (torch.randn(3, 32, 32), r"\[batch, 3, height, width\]"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "floating point"),
    (torch.randn(1, 3, 4, 32), "smaller than one 8 px patch"),
])
def test_bad_images_raise_input_error(pixels, fragment):
    with pytest.raises(InputError, match=fragment):
        _vit()(pixels)


def test_a_conv_stem_gives_the_patch_grid_and_needs_a_power_of_two():
    tower = VisionTransformer(VisionConfig(image_size=32, patch_size=8, stem="conv", width=64, layers=2, heads=4,
                                           window_size=2, num_prompts=2))
    assert tower(torch.randn(2, 3, 32, 32)).shape == (2, 2 + 16, 64)  # prompts + a 4 x 4 grid, as patchify gives
    with pytest.raises(ConfigError, match="power-of-two patch_size"):
        VisionTransformer(VisionConfig(image_size=28, patch_size=14, stem="conv", width=64, layers=1, heads=4))
