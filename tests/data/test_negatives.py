import random

from vlstack.data.augment import WordGroups
from vlstack.data.negatives import default_contrasts, swap_negative


def test_one_contrast_word_is_swapped_for_another_of_its_group():
    groups = WordGroups([["red", "blue"], ["circle", "square"]])
    caption = "A red circle on the left"
    swaps = {swap_negative(caption, random.Random(seed), groups) for seed in range(20)}
    assert swaps == {"A blue circle on the left", "A red square on the left"}
    assert swap_negative("Red dots", random.Random(0), groups) == "Blue dots"  # the capital is kept
    assert swap_negative("a green triangle", random.Random(0), groups) is None  # nothing to swap


def test_the_shipped_groups_contradict_colours_shapes_directions_in_english_and_chinese():
    groups = default_contrasts()
    assert "blue" in groups.synonyms["red"] and "square" in groups.synonyms["circle"]
    assert groups.synonyms["left"] == ("right",) and "正方形" in groups.synonyms["圆形"]
    assert "grey" not in groups.synonyms.get("gray", ())  # synonyms never contradict each other
    rng = random.Random(1)
    swapped = swap_negative("左边是一个红色的圆形", rng)
    assert swapped is not None and swapped != "左边是一个红色的圆形" and len(swapped) >= len("左边是一个红色的圆形") - 1
