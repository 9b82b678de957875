import torch

from vlstack.eval.retrieval import image_to_text_recall, word_accuracy


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


def test_word_accuracy_counts_the_images_whose_summary_prefers_their_own_captions_words():
    # four captions "<bos> a <colour>": "a" and "<bos>" are in all of them, so only the colours (ids 2-5) count
    ids = torch.tensor([[0, 1, 2], [0, 1, 3], [0, 1, 4], [0, 1, 5]])
    attention = torch.ones_like(ids)
    naming = torch.full((4, 6), -10.0)
    naming[torch.arange(4), torch.tensor([2, 3, 4, 5])] = -0.1  # each summary names its own colour
    wrong = torch.tensor([1, 0, 3, 2])
    assert word_accuracy(naming, ids, attention, wrong) == 1.0
    assert word_accuracy(naming[[1, 0, 2, 3]], ids, attention, wrong) == 0.5  # images 0 and 1 name each other's
