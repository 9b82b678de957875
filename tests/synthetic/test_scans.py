import numpy as np
import pytest

from vlstack.apps.medical import REPORT_PROMPTS
from vlstack.errors import DataError
from vlstack.synthetic.instructions import instruction_samples
from vlstack.synthetic.scans import findings_text, read_findings, scan, scan_samples


def test_scans_are_reproducible_and_splits_share_no_image():
    assert np.array_equal(scan(3, 7).pixels, scan(3, 7).pixels)
    train = {s.images[0].data for s in scan_samples(30, split="train")}
    held_out = {s.images[0].data for s in scan_samples(30, split="test")}
    assert len(train) == 30 and not train & held_out


def test_about_half_the_scans_have_a_lesion_on_either_side():
    lesions = [scan(0, i).lesion for i in range(300)]
    sides = [lesion.side for lesion in lesions if lesion]
    assert 0.4 <= len(sides) / len(lesions) <= 0.6
    assert 0.4 <= sides.count("left") / len(sides) <= 0.6


def test_a_lesion_is_drawn_where_the_truth_says_and_nowhere_else():
    for i in range(60):
        item, without = scan(1, i), scan(1, i, draw_lesion=False)
        added = item.pixels.astype(int) - without.pixels.astype(int)
        if item.lesion is None:
            assert not added.any()
            continue
        x0, y0, x1, y1 = item.lesion.box
        assert added[y0:y1, x0:x1].max() >= 80  # the blob's peak, unless clipped at white
        outside = added.copy()
        outside[y0:y1, x0:x1] = 0
        assert outside.max() <= 14  # only the blob's faint tail (under a tenth of its peak) leaves the box
        assert (item.lesion.side == "left") == (item.lesion.x < item.pixels.shape[1] / 2)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_answers_follow_the_truth_and_reports_parse_back(lang, scan_answer):
    samples = scan_samples(200, seed=2, split="val", lang=lang)
    assert {s.meta["question_type"] for s in samples} == {"presence", "side", "report"}
    assert len({s.question for s in samples}) == 1 + 3 + 3 + 2  # the report, each wording, "on the left / right"
    for sample in samples:
        lesion = sample.meta["lesion"]
        answer = sample.answers[0]
        assert sample.conversations[-1]["value"] == answer and sample.meta["dataset"] == "scans"
        if sample.meta["question_type"] == "report":
            assert sample.question == REPORT_PROMPTS[lang]
            assert sample.conversations[0]["value"] == f"<image>\n{REPORT_PROMPTS[lang]}"  # no one-word suffix
            assert read_findings(answer) == {"lesion": lesion is not None, "side": lesion and lesion["side"]}
        else:
            assert answer == scan_answer(sample.question, lesion, lang), sample.question


def test_off_template_findings_are_not_guessed():
    assert read_findings("a red circle on the left") == {"lesion": None, "side": None}
    assert read_findings("") == {"lesion": None, "side": None}
    assert read_findings(findings_text("right", "zh")) == {"lesion": True, "side": "right"}


def test_the_scans_are_a_registered_instruction_dataset():
    samples = instruction_samples("scans", 5, seed=0, split="test", lang="zh")
    assert len(samples) == 5 and all(s.conversations[0]["value"].startswith("<image>\n") for s in samples)
    with pytest.raises(DataError, match="unknown question type"):
        scan_samples(2, question_types=("size",))
