"""The official metrics of the six benchmarks and of POPE, written from their reference scripts.

Each function names its reference and follows it exactly; where a reference crashes
or says nothing (a division by zero, an empty string, an empty answer list), the
docstring states the choice made. Per-item scores are fractions in [0, 1]; the
benchmarks turn their means into percentages, as the official scripts print them.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

from vlstack.errors import DataError

# --- VQAv2: GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py ---------------------------

_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
_CONTRACTIONS = {  # vqaEval.py's table, entry for entry (BSD licence, (c) 2014 Aishwarya Agrawal)
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!")
# The script's `\d` ran under Python 2 without re.UNICODE, so it matched ASCII digits only.
_DIGIT_COMMA_DIGIT = re.compile(r"[0-9],[0-9]")
# vqaEval.py writes "(?!<=\d)(\.)(?!\d)": the first group is a lookahead for the text "<=" and a digit,
# which never matches where a "." stands, so a period goes unless a digit follows it.
_PERIOD = re.compile(r"\.(?![0-9])")
_PERIODS_REMOVED = 32
"""vqaEval.py passes re.UNICODE (= 32) as the `count` argument of `sub`: at most 32 periods are removed."""


def _vqa_whitespace(text: str) -> str:
    """The cleanup vqaEval.py applies to every answer: newlines and tabs become spaces, then strip."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _vqa_punctuation(text: str) -> str:
    """vqaEval.py `processPunctuation`: a mark next to a space, or any mark in a text with a
    digit-comma-digit, is deleted; otherwise it becomes a space. Then periods not before a digit go."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        delete = delete_all or mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if delete else " ")
    return _PERIOD.sub("", out, count=_PERIODS_REMOVED)


def _vqa_digits_articles(text: str) -> str:
    """vqaEval.py `processDigitArticle`: lower-case, number words to digits, articles out, contractions in."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def normalize_vqa_answer(text: str) -> str:
    """The full answer processing of VQAv2's vqaEval.py: whitespace, punctuation, digits and articles."""
    return _vqa_digits_articles(_vqa_punctuation(_vqa_whitespace(text)))


def vqa_accuracy(pred: str, answers: list[str]) -> float:
    """VQAv2 accuracy of one prediction (GT-Vision-Lab/VQA `vqaEval.py`, `VQAEval.evaluate`).

    Every answer is whitespace-cleaned; punctuation/number/article/contraction processing
    runs on the prediction and the human answers only when the human answers are not all
    identical (a unanimous "yes" is compared with the raw prediction, so "Yes" scores 0).
    The score is the mean, over the leave-one-out subsets of the human answers, of
    min(1, matches / 3). With a single human answer every subset is empty and the score
    is 0, as in the script; the official data has ten answers per question.
    """
    references = [_vqa_whitespace(answer) for answer in _references(answers)]
    pred = _vqa_whitespace(pred)
    if len(set(references)) > 1:
        references = [_vqa_digits_articles(_vqa_punctuation(answer)) for answer in references]
        pred = _vqa_digits_articles(_vqa_punctuation(pred))
    matches = sum(answer == pred for answer in references)
    # Leaving out answer i removes one match exactly when answer i itself matches.
    return sum(min(1.0, (matches - (answer == pred)) / 3) for answer in references) / len(references)


# --- GQA: the official eval.py (cs.stanford.edu/people/dorarad/gqa/evaluate.html) ----------------------

def exact_match(pred: str, answer: str) -> bool:
    """GQA accuracy of one prediction: `predicted == gold` on the raw strings, as GQA's eval.py.

    No normalisation at all: the script expects clean single-word answers, so the GQA
    benchmark's answer post-processing (first line, trailing period, lower case) does
    the cleaning before this comparison.
    """
    return pred == answer


# --- DocVQA: ANLS (Biten et al. 2019, Eq. 1; google-research/pix2struct metrics.py `anls_metric`) --------

def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of code points)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def anls(pred: str, answers: list[str], threshold: float = 0.5) -> float:
    """ANLS of one prediction: the best over the answers of 1 - NL if NL < threshold, else 0.

    NL is the Levenshtein distance divided by the longer length, on lower-cased and
    stripped strings (pix2struct lower-cases only; stripping only forgives the spaces a
    generation adds around its answer, which DocVQA answers never carry).
    The comparison is strict, as in the paper and pix2struct: NL of exactly 0.5 scores 0.
    Two empty strings have NL 0 (pix2struct would divide by zero), so they score 1.
    """
    pred = pred.strip().lower()
    best = 0.0
    for answer in _references(answers):
        answer = answer.strip().lower()
        longest = max(len(answer), len(pred))
        distance = levenshtein(answer, pred) / longest if longest else 0.0
        if distance < threshold:
            best = max(best, 1.0 - distance)
    return best


# --- ChartQA: relaxed accuracy (google-research/pix2struct metrics.py `relaxed_correctness`) -----------

def _relaxed_float(text: str) -> float | None:
    """pix2struct's `_to_float`: Python's float(), with a trailing "%" read as a fraction."""
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_accuracy(pred: str, target: str, tolerance: float = 0.05) -> bool:
    """ChartQA relaxed correctness, exactly pix2struct's `relaxed_correctness`.

    When both parse as numbers ("12", "3.5e2", "45%" = 0.45) and the target is non-zero,
    the relative change |pred - target| / |target| must be <= tolerance (5% itself passes);
    otherwise (text, a zero target, "1,000") the case-insensitive strings must be equal.
    No stripping: float() ignores surrounding spaces, the string comparison does not.
    """
    pred_value, target_value = _relaxed_float(pred), _relaxed_float(target)
    if pred_value is not None and target_value:
        return abs(pred_value - target_value) / abs(target_value) <= tolerance
    return pred.lower() == target.lower()


# --- A-OKVQA: allenai/aokvqa evaluation/eval_predictions.py `eval_aokvqa` -------------------------------

def aokvqa_mc_accuracy(pred: str, choices: list[str], correct_choice_idx: int) -> float:
    """Multiple choice: 1 if the prediction is the text of the correct choice, else 0 (no normalisation).

    The script's non-strict mode (the one its main uses) scores a prediction that is not
    one of the choices as 0; the A-OKVQA benchmark maps a letter answer to its choice first.
    """
    if not 0 <= correct_choice_idx < len(choices):
        raise DataError(f"correct_choice_idx {correct_choice_idx} is outside the {len(choices)} choices")
    return float(pred == choices[correct_choice_idx])


def aokvqa_da_accuracy(pred: str, direct_answers: list[str]) -> float:
    """Direct answer: min(1, #direct answers equal to the prediction / 3), raw string equality.

    Unlike VQAv2 there is no leave-one-out and no answer processing. The official
    average leaves out the questions marked `difficult_direct_answer`; the benchmark does.
    """
    return min(1.0, sum(pred == answer for answer in _references(direct_answers)) / 3.0)


# --- VQA-RAD: closed / open accuracy and BLEU ---------------------------------------------------------
# VQA-RAD ships no scoring script. These follow the conventions of LLaVA-Med's eval
# (closed: yes/no accuracy; open: token recall), on one tokenisation that also splits Chinese.

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")


def answer_tokens(text: str) -> list[str]:
    """Lower-cased words; each CJK character is a token; punctuation is dropped."""
    text = "".join(" " if unicodedata.category(char).startswith("P") else char for char in text.lower())
    return _TOKEN.findall(text)


def closed_accuracy(pred: str, answer: str) -> float:
    """A closed question: for a yes/no answer, the first "yes" or "no" in the prediction must match it
    (LLaVA-Med tests `answer in pred`, which credits "no" inside "nodule"); for another closed
    answer ("left"), the prediction's tokens must equal the answer's."""
    gold, tokens = answer_tokens(answer), answer_tokens(pred)
    if gold in (["yes"], ["no"]):
        said = next((token for token in tokens if token in ("yes", "no")), None)
        return float([said] == gold)
    return float(tokens == gold)


def open_accuracy(pred: str, answer: str) -> float:
    """An open question answered exactly: the same tokens (case and punctuation ignored)."""
    return float(answer_tokens(pred) == answer_tokens(answer))


def open_recall(pred: str, answer: str) -> float:
    """The share of the answer's tokens that appear in the prediction (LLaVA-Med's open-question recall).

    An answer without tokens (empty, punctuation only) falls back to `open_accuracy`.
    """
    gold, said = answer_tokens(answer), set(answer_tokens(pred))
    if not gold:
        return open_accuracy(pred, answer)
    return sum(token in said for token in gold) / len(gold)


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_order: int = 4,
         smooth: bool = False) -> dict[str, float]:
    """Corpus BLEU-1 .. BLEU-`max_order` (Papineni et al. 2002) on `answer_tokens`.

    Clipped n-gram counts (max over each hypothesis' references) and the brevity penalty
    exp(1 - r/c) when c <= r (r: the reference length closest to each hypothesis, shorter
    on ties) are summed over the corpus; BLEU-k is the penalty times the geometric mean of
    the precisions of orders 1..k. `smooth=False` is the standard definition: an order with
    no match makes every BLEU from it on 0. `smooth=True` is Lin & Och's (2004) add-one
    smoothing on every order, as tensorflow/nmt's `compute_bleu`, which keeps one-word
    answers (no 4-grams at all) from zeroing BLEU-4. An empty hypothesis adds nothing
    but its reference length, so it lowers the score through the penalty.
    """
    if len(hypotheses) != len(references):
        raise DataError(f"bleu needs one reference list per hypothesis: {len(hypotheses)} vs {len(references)}")
    matches, possible = [0] * max_order, [0] * max_order
    hypothesis_length = reference_length = 0
    for hypothesis, refs in zip(hypotheses, references):
        tokens, ref_tokens = answer_tokens(hypothesis), [answer_tokens(r) for r in _references(refs)]
        hypothesis_length += len(tokens)
        reference_length += min((abs(len(r) - len(tokens)), len(r)) for r in ref_tokens)[1]
        for n in range(1, max_order + 1):
            counts = _ngrams(tokens, n)
            clip: Counter = Counter()
            for ref in ref_tokens:
                clip |= _ngrams(ref, n)
            matches[n - 1] += sum((counts & clip).values())
            possible[n - 1] += max(0, len(tokens) - n + 1)
    if smooth:
        precisions = [(m + 1) / (p + 1) for m, p in zip(matches, possible)]
    else:
        precisions = [m / p if p else 0.0 for m, p in zip(matches, possible)]
    if hypothesis_length == 0:
        penalty = 0.0
    elif hypothesis_length > reference_length:
        penalty = 1.0
    else:
        penalty = math.exp(1 - reference_length / hypothesis_length)
    scores = {}
    for k in range(1, max_order + 1):
        head = precisions[:k]
        mean_log = sum(math.log(p) for p in head) / k if min(head) > 0 else -math.inf
        scores[f"bleu_{k}"] = penalty * math.exp(mean_log)
    return scores


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


# --- POPE: AoiDragon/POPE evaluate.py -----------------------------------------------------------------

def pope_answer(response: str) -> str:
    """The answer POPE's evaluate.py reads from a response: "no" or "yes".

    The text before the first "." loses its commas and is split on single spaces; the
    answer is "no" if a word is exactly "No", "no" or "not", else "yes". Case-sensitive,
    as the script: "NO" and "Nope" read as "yes", and so does an empty reply.
    """
    words = response.split(".")[0].replace(",", "").split(" ")
    return "no" if {"No", "no", "not"} & set(words) else "yes"


def pope_metrics(responses: list[str], labels: list[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio of POPE (AoiDragon/POPE evaluate.py), "yes" positive.

    A label is negative when it is exactly "no", positive otherwise, as the script. Where
    the script divides by zero (no "yes" predicted, no positive label) the value is 0.
    Unlike the script, which zips silently, lists of different lengths are an error.
    """
    if len(responses) != len(labels) or not labels:
        raise DataError(f"pope_metrics needs one label per response and at least one: "
                        f"{len(responses)} responses, {len(labels)} labels")
    predicted = [pope_answer(response) != "no" for response in responses]
    positive = [label != "no" for label in labels]
    tp = sum(p and g for p, g in zip(predicted, positive))
    fp = sum(p and not g for p, g in zip(predicted, positive))
    fn = sum(g and not p for p, g in zip(predicted, positive))
    tn = len(labels) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(labels), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": sum(predicted) / len(predicted), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def _references(answers: Sequence[str]) -> Sequence[str]:
    """The reference answers, which must not be empty: every metric here needs at least one."""
    if not answers:
        raise DataError("no reference answers to score against; every question needs at least one answer")
    return answers
