import torch

from vlstack.data.collate import image_to_tensor, tokenize_texts
from vlstack.errors import DataError
from vlstack.models.config import VisionConfig
from vlstack.synthetic.scenes import COLORS, caption_for, shape_scene


def test_scenes_are_deterministic_and_captions_are_true():
    a, b = shape_scene(7, 3), shape_scene(7, 3)
    assert a.caption == b.caption and a.image.tobytes() == b.image.tobytes()
    assert shape_scene(8, 3).image.tobytes() != a.image.tobytes()
    for obj in a.objects:
        x0, y0, x1, y1 = obj.box
        centre = a.image.getpixel(((x0 + x1) // 2, y0 + (y1 - y0) * 2 // 3))  # inside every shape kind
        assert centre == COLORS[obj.color]
    assert caption_for(a.objects, "zh") == shape_scene(7, 3, lang="zh").caption


def test_image_to_tensor_normalises():
    tensor = image_to_tensor(shape_scene(0, 0, image_size=40).image, VisionConfig(image_size=32))
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    assert -2.5 < tensor.min() and tensor.max() < 2.5


def test_tokenize_right_pads_and_rejects_long_text(tokenizer):
    batch = tokenize_texts(tokenizer, ["a red circle", "a blue square on the right and more"], max_length=32)
    assert batch.input_ids.shape == batch.attention_mask.shape
    assert batch.attention_mask[0].tolist() == sorted(batch.attention_mask[0].tolist(), reverse=True)
    ends = batch.attention_mask.sum(1) - 1
    assert (batch.input_ids[torch.arange(2), ends] == tokenizer.eos_token_id).all()
    try:
        tokenize_texts(tokenizer, ["word " * 50], max_length=10)
    except DataError as exc:
        assert "over the limit of 10" in str(exc)
    else:
        raise AssertionError("an over-long text must be a DataError")
