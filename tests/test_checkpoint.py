import torch
from safetensors.torch import load_file

from vlstack.checkpoint import save_weights


def test_views_of_a_larger_buffer_are_saved_whole_and_tied_weights_stay_shared(tmp_path):
    buffer = torch.arange(12.0)
    embedding = torch.randn(4, 3)
    state = {
        "prompts": buffer[2:8].view(2, 3),  # part of a larger storage, as in a gathered FSDP2 state dict
        "transposed": torch.randn(3, 2).t(),  # not contiguous
        "embed": embedding,
        "lm_head": embedding,  # tied
    }
    save_weights(state, tmp_path)
    loaded = load_file(str(tmp_path / "model.safetensors"))
    for name in ("prompts", "transposed"):
        assert torch.equal(loaded[name], state[name]), name
    [tied] = {"embed", "lm_head"} & set(loaded)  # stored once; load_weights restores the alias
    assert torch.equal(loaded[tied], embedding)
