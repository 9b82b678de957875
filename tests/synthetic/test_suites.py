"""The synthetic suites: official formats that the loaders read back, deterministic by seed."""

import hashlib

import pytest

from vlstack.eval.benchmarks import BENCHMARKS
from vlstack.synthetic.scans import scan, scan_samples
from vlstack.synthetic.scenes import encode_image
from vlstack.synthetic.suites import SCAN_STREAM, WRITERS, write_suites


@pytest.fixture(scope="module")
def suites(tmp_path_factory):
    return write_suites(tmp_path_factory.mktemp("suites"), n=4, seed=0)


def perfect_answer(name, item):
    return item.choices[item.meta["correct_choice_idx"]] if name == "aokvqa" else item.answers[0]


def test_every_suite_round_trips_through_its_loader(suites):
    assert set(suites) == {name for name, cls in BENCHMARKS.items() if cls.data_dir in WRITERS}
    assert set(suites) >= {"vqav2", "gqa", "docvqa", "chartqa", "vqarad", "aokvqa", "aokvqa_da"}
    for name, folder in suites.items():
        bench = BENCHMARKS[name].from_root(folder)
        assert len(bench.items) == (3 if name == "aokvqa_da" else 4)  # one difficult question left out
        assert all(item.image.is_file() and item.question and item.answers for item in bench.items)
        result = bench.score({item.id: perfect_answer(name, item) for item in bench.items})
        assert result["metrics"][bench.primary] == pytest.approx(100.0), name
        assert bench.score({})["metrics"][bench.primary] == 0.0


def test_suites_are_deterministic_by_seed(tmp_path):
    def digest(root):
        return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}
    write_suites(tmp_path / "a", n=2, seed=3)
    write_suites(tmp_path / "b", n=2, seed=3)
    write_suites(tmp_path / "c", n=2, seed=4)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_gqa_verify_questions_are_balanced(tmp_path):
    """A model answering "no" to every existence question must not score most of them."""
    WRITERS[BENCHMARKS["gqa"].data_dir](tmp_path, 200, 0)
    bench = BENCHMARKS["gqa"].from_root(tmp_path)
    answers = [item.answers[0] for item in bench.items if item.answers[0] in ("yes", "no")]
    assert len(answers) == 100
    assert 0.4 <= answers.count("yes") / len(answers) <= 0.6


def test_vqarad_asks_about_the_scans_datasets_train_on_and_shares_none(tmp_path, scan_answer):
    """Its scans come from `synthetic.scans` (the `scans` dataset's generator), its answers follow each scan's
    lesion, and no suite scan is one of a dataset's."""
    folder = write_suites(tmp_path, n=40, seed=0)["vqarad"]
    bench = BENCHMARKS["vqarad"].from_root(folder)
    assert {item.meta["answer_type"] for item in bench.items} == {"closed", "open"}
    assert {item.answers[0] for item in bench.items if item.meta["answer_type"] == "closed"} == {"yes", "no"}
    for index, item in enumerate(bench.items):
        lesion = scan(0, SCAN_STREAM + index).lesion
        expected = scan_answer(item.question, lesion and {"side": lesion.side}, "en")
        assert item.answers[0] == expected, item.question
    trained = {s.images[0].data for split in ("train", "val", "test") for s in scan_samples(300, split=split)}
    asked = {encode_image(scan(0, SCAN_STREAM + index).image) for index in range(40)}
    assert not trained & asked
