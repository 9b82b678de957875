"""Golden values of the official metrics, each worked out by hand from the reference script's definition."""

import math

import pytest

from vlstack.errors import DataError
from vlstack.eval.metrics import (
    anls,
    aokvqa_da_accuracy,
    aokvqa_mc_accuracy,
    bleu,
    closed_accuracy,
    exact_match,
    levenshtein,
    normalize_vqa_answer,
    open_accuracy,
    open_recall,
    pope_answer,
    pope_metrics,
    relaxed_accuracy,
    vqa_accuracy,
)

# --- VQAv2 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("T-Shirt", "t shirt"),              # a mark with no space beside it becomes a space
    ("yes, it is", "yes it is"),         # a mark next to a space is deleted
    ("1,000", "1000"),                   # digit,digit: the comma is deleted
    ("red-white, 1,000", "redwhite 1000"),  # ...and then every mark in the text is deleted
    ("yes/no", "yes no"),
    ("(left)", "left"),
    ("Mr. Smith", "mr smith"),           # a period not before a digit goes
    ("3.5", "3.5"),                      # a period before a digit stays
    ("2.", "2"),
    ("a.m.", "am"),
    ("10:30", "10:30"),                  # ":" and "%" are not in the punctuation list
    ("50%", "50%"),
    ("one - two", "1 2"),                # number words become digits
    ("None", "0"),
    ("ten?", "10"),
    ("The dog", "dog"),                  # articles go
    ("a", ""),
    ("dont", "don't"),                   # contractions gain their apostrophe
    ("Im", "im"),                        # the table's capitalised keys never match lower-cased words
    ("somebody'd", "somebodyd"),         # the table's one reversed entry
    ("it's", "it's"),
    ("\tyes\n", "yes"),
    ("x" + "." * 40, "x" + "." * 8),     # re.UNICODE passed as count: at most 32 periods are removed
    ("两个。", "两个。"),                  # CJK punctuation is untouched
    ("红色，蓝色", "红色，蓝色"),
])
def test_vqa_answer_processing(text, expected):
    assert normalize_vqa_answer(text) == expected


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_leave_one_out_average(matches, expected):
    # k matches: the 10-k left-out non-matching answers give min(1, k/3), the k matching ones min(1, (k-1)/3)
    answers = ["2"] * matches + ["3"] * (10 - matches)
    assert vqa_accuracy("2", answers) == pytest.approx(expected)


@pytest.mark.parametrize("pred, answers, expected", [
    ("Two", ["2"] * 10, 0.0),                            # unanimous answers: no processing at all
    ("Yes", ["yes"] * 10, 0.0),
    ("\tyes\n", ["yes"] * 10, 1.0),                      # ...but whitespace is always cleaned
    ("Two", ["2"] * 3 + ["3"] * 7, 0.9),                 # answers differ: "Two" -> "2"
    ("None", ["0"] * 2 + ["1"] * 8, 0.6),
    ("dont know", ["don't know"] * 2 + ["no"] * 8, 0.6),
    ("The dog", ["dog"] * 3 + ["a cat"] * 7, 0.9),
    ("T-shirt!", ["t shirt"] * 4 + ["shirt"] * 6, 1.0),
    ("", ["the"] * 3 + ["cat"] * 7, 0.9),                # "the" processes to "", as does the empty prediction
    ("", ["yes"] * 10, 0.0),
    ("两个", ["两个"] * 3 + ["三个"] * 7, 0.9),
    ("两个。", ["两个"] * 3 + ["三个"] * 7, 0.0),
    ("2", ["2"], 0.0),                                   # one answer: every leave-one-out subset is empty
])
def test_vqa_accuracy(pred, answers, expected):
    assert vqa_accuracy(pred, answers) == pytest.approx(expected)


def test_metrics_need_reference_answers():
    for metric in (vqa_accuracy, anls, aokvqa_da_accuracy):
        with pytest.raises(DataError, match="no reference answers"):
            metric("yes", [])


# --- GQA -----------------------------------------------------------------------------------------------

def test_exact_match_is_raw_string_equality():
    assert exact_match("yes", "yes") and exact_match("是", "是")
    assert not exact_match("Yes", "yes") and not exact_match("yes ", "yes") and not exact_match("", "yes")


# --- DocVQA --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pred, answers, expected", [
    ("abcx", ["abcd"], 0.75),
    ("abxy", ["abcd"], 0.0),             # NL exactly 0.5 is not below the threshold: 0
    ("abcdxyz", ["abcdefg"], 4 / 7),     # NL 3/7 just below 0.5
    ("abcwxyz", ["abcdefg"], 0.0),       # NL 4/7 just above
    (" ABCD ", ["abcd"], 1.0),           # lower-cased and stripped
    ("abcx", ["zzzz", "abcd"], 0.75),    # best over the answers
    ("", ["abc"], 0.0),
    ("abc", [""], 0.0),
    ("", [""], 1.0),
    ("发票号吗", ["发票号码"], 0.75),
])
def test_anls(pred, answers, expected):
    assert anls(pred, answers) == pytest.approx(expected)


def test_anls_threshold_and_levenshtein():
    assert anls("abxy", ["abcd"], threshold=0.6) == pytest.approx(0.5)
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3
    assert levenshtein("左肺", "右肺") == 1


# --- ChartQA -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pred, target, expected", [
    ("105", "100", True),                # exactly 5%: |5| / 100 == 0.05 <= 0.05
    ("95", "100", True),
    ("105.1", "100", False),
    ("94.9", "100", False),
    ("1.05", "1", False),                # in doubles 1.05 - 1 is 0.050000000000000044: over the tolerance
    ("52%", "50%", True),                # percentages are fractions: 0.52 vs 0.5
    ("0.5", "50%", True),
    ("50", "50%", False),
    ("1e2", "100", True),
    (" 12", "12", True),                 # float() ignores surrounding spaces
    ("0", "0", True),                    # zero target: string comparison
    ("0.0", "0", False),
    ("Apple", "apple", True),            # text: case-insensitive equality
    ("apple ", "apple", False),
    ("1,000", "1000", False),
    ("", "12", False),
    ("苹果", "苹果", True),
    ("十二", "12", False),
])
def test_relaxed_accuracy(pred, target, expected):
    assert relaxed_accuracy(pred, target) is expected


def test_relaxed_accuracy_tolerance():
    assert relaxed_accuracy("109", "100", tolerance=0.1) and not relaxed_accuracy("111", "100", tolerance=0.1)


# --- A-OKVQA -------------------------------------------------------------------------------------------

def test_aokvqa_multiple_choice():
    assert aokvqa_mc_accuracy("dog", ["cat", "dog"], 1) == 1.0
    assert aokvqa_mc_accuracy("Dog", ["cat", "dog"], 1) == 0.0 and aokvqa_mc_accuracy("B", ["cat", "dog"], 1) == 0.0
    assert aokvqa_mc_accuracy("狗", ["猫", "狗"], 1) == 1.0
    with pytest.raises(DataError, match="outside"):
        aokvqa_mc_accuracy("dog", ["cat", "dog"], 2)


@pytest.mark.parametrize("pred, answers, expected", [
    ("dog", ["dog"] * 2 + ["puppy"] * 8, 2 / 3),   # no leave-one-out: min(1, 2/3)
    ("dog", ["dog"] * 3 + ["puppy"] * 7, 1.0),
    ("Dog", ["dog"] * 10, 0.0),                     # no processing
    ("", ["dog"] * 10, 0.0),
    ("狗", ["狗"] + ["猫"] * 9, 1 / 3),
])
def test_aokvqa_direct_answer(pred, answers, expected):
    assert aokvqa_da_accuracy(pred, answers) == pytest.approx(expected)


# --- VQA-RAD -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pred, answer, expected", [
    ("Yes, there is a mass.", "yes", 1.0),
    ("No nodule is seen.", "no", 1.0),
    ("There is a nodule.", "no", 0.0),   # "no" inside "nodule" does not count
    ("yes and no", "no", 0.0),           # the first yes/no word is the answer
    ("Left.", "left", 1.0),              # a closed answer that is not yes/no: token equality
    ("", "yes", 0.0),
    ("是", "是", 1.0),
])
def test_closed_accuracy(pred, answer, expected):
    assert closed_accuracy(pred, answer) == expected


def test_open_accuracy_and_recall():
    assert open_accuracy("Left lung.", "left lung") == 1.0 and open_accuracy("the left lung", "left lung") == 0.0
    assert open_recall("left upper lobe", "left lung") == 0.5
    assert open_recall("左肺", "左肺上叶") == 0.5           # one token per CJK character
    assert open_recall("", "left") == 0.0 and open_recall("", "") == 1.0


def test_bleu_golden():
    # hypothesis n-gram matches vs "the cat is on the mat": 5/6, 3/5, 1/4, 0/3; equal lengths, no penalty
    scores = bleu(["the cat sat on the mat"], [["the cat is on the mat"]])
    assert scores["bleu_1"] == pytest.approx(5 / 6)
    assert scores["bleu_2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert scores["bleu_3"] == pytest.approx(0.5)
    assert scores["bleu_4"] == 0.0
    smoothed = bleu(["the cat sat on the mat"], [["the cat is on the mat"]], smooth=True)  # (m+1)/(p+1)
    assert smoothed["bleu_1"] == pytest.approx(6 / 7)
    assert smoothed["bleu_4"] == pytest.approx((6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25)


def test_bleu_brevity_clipping_and_empty():
    assert bleu(["the cat"], [["the cat sat on the mat"]])["bleu_2"] == pytest.approx(math.exp(1 - 6 / 2))
    # "the" is clipped at 2 (its most in one reference); the closest reference length is 3
    assert bleu(["the the the"], [["the cat", "the the dog"]])["bleu_1"] == pytest.approx(2 / 3)
    # an empty hypothesis only adds its reference length: c = 1, r = 2
    assert bleu(["yes", ""], [["yes"], ["no"]])["bleu_1"] == pytest.approx(math.exp(1 - 2))
    assert bleu([""], [["yes"]]) == {f"bleu_{k}": 0.0 for k in range(1, 5)}


def test_bleu_short_answers_and_chinese():
    assert bleu(["yes"], [["yes"]]) == {"bleu_1": 1.0, "bleu_2": 0.0, "bleu_3": 0.0, "bleu_4": 0.0}
    assert bleu(["yes"], [["yes"]], smooth=True)["bleu_4"] == pytest.approx(1.0)
    assert bleu(["左肺"], [["左肺"]])["bleu_2"] == pytest.approx(1.0)
    with pytest.raises(DataError):
        bleu(["yes"], [])


# --- POPE ----------------------------------------------------------------------------------------------

def test_pope_answer_parsing():
    parsed = [pope_answer(r) for r in ["Yes, there is a dog.", "No.", "There is not a cat in the image", "NO",
                                        "no, but maybe", "I don't know. No", "Nope", "", "不是"]]
    assert parsed == ["yes", "no", "no", "yes", "no", "yes", "yes", "yes", "yes"]


def test_pope_metrics():
    responses = ["Yes, there is a dog.", "No.", "There is not a cat in the image", "NO", "no, but maybe",
                 "I don't know. No", "Nope", ""]
    labels = ["yes", "no", "yes", "no", "no", "yes", "no", "yes"]
    # predicted yes,no,no,yes,no,yes,yes,yes: TP 3, FP 2, TN 2, FN 1
    result = pope_metrics(responses, labels)
    assert (result["tp"], result["fp"], result["tn"], result["fn"]) == (3, 2, 2, 1)
    assert result["accuracy"] == pytest.approx(5 / 8) and result["yes_ratio"] == pytest.approx(5 / 8)
    assert result["precision"] == pytest.approx(3 / 5) and result["recall"] == pytest.approx(3 / 4)
    assert result["f1"] == pytest.approx(2 / 3)


def test_pope_metrics_edge_cases():
    chinese = pope_metrics(["是的", "不是"], ["yes", "no"])  # no English "no" word: both read as yes
    assert chinese["accuracy"] == 0.5 and chinese["yes_ratio"] == 1.0
    never_yes = pope_metrics(["No.", "No."], ["yes", "no"])
    assert never_yes["precision"] == 0.0 and never_yes["f1"] == 0.0 and never_yes["accuracy"] == 0.5
    with pytest.raises(DataError, match="one label per response"):
        pope_metrics(["yes"], ["yes", "no"])
    with pytest.raises(DataError):
        pope_metrics([], [])
