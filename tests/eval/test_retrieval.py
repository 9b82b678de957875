import torch

from vlstack.eval.retrieval import image_to_text_recall


def test_perfect_and_shuffled_retrieval_with_repeated_captions():
    eye = torch.eye(4)
    captions = ["a", "b", "a", "c"]
    perfect = image_to_text_recall(eye, eye, captions)
    assert perfect["r@1"] == 1.0
    assert perfect["chance@1"] == (0.5 + 0.25 + 0.5 + 0.25) / 4
    swapped = image_to_text_recall(eye, eye[[2, 1, 0, 3]], captions)  # rows 0 and 2 swap: same caption text
    assert swapped["r@1"] == 1.0
    wrong = image_to_text_recall(eye, eye[[1, 0, 3, 2]], captions)
    assert wrong["r@1"] == 0.0
