"""The eval harness end to end on a nano checkpoint: plumbing and accounting, not accuracy."""

import json

import pytest

from vlstack.checkpoint import save_model
from vlstack.cli import main
from vlstack.errors import ConfigError, DataError, VlstackError
from vlstack.eval.harness import ARTICLE_BENCHMARKS, EvalConfig, run_eval
from vlstack.eval.report import ARTICLE_REFERENCE
from vlstack.infer.engine import Engine
from vlstack.synthetic.suites import write_suites

FAST = {"max_new_tokens": 3, "batch_size": 2}


@pytest.fixture(scope="module")
def suites(tmp_path_factory):
    """The six synthetic suites in their official formats, 4 questions each."""
    root = tmp_path_factory.mktemp("suites")
    write_suites(root, n=4)
    return root


@pytest.fixture
def checkpoint(tmp_path, nano_model, tokenizer):
    directory = tmp_path / "ckpt"
    save_model(nano_model, directory, tokenizer=tokenizer)
    return directory


def test_every_seed_benchmark_end_to_end_on_synthetic_suites(tmp_path, checkpoint, suites):
    out = tmp_path / "eval"
    results = run_eval(checkpoint, EvalConfig(out_dir=str(out), data_root=str(suites), limit=3, **FAST))

    assert json.loads((out / "results.json").read_text(encoding="utf-8")) == results
    assert list(results["benchmarks"]) == ARTICLE_BENCHMARKS
    assert set(results["versions"]) >= {"vlstack", "torch", "transformers"}
    assert results["config"]["limit"] == 3 and results["seconds"] > 0
    for name, bench in results["benchmarks"].items():
        assert (bench["count"], bench["available"], len(bench["items"])) == (3, 4, 3), name
        statuses = [row["status"] for row in bench["items"]]
        assert bench["missing"] == statuses.count("missing") == bench["errors"] == 0, name
        assert bench["empty"] == statuses.count("empty")
        assert all(isinstance(row["raw"], str) and row["question"] and row["answers"] for row in bench["items"])
        assert 0.0 <= bench["metrics"][bench["primary"]] <= 100.0
    markdown = (out / "report.md").read_text(encoding="utf-8")
    page = (out / "report.html").read_text(encoding="utf-8")
    for name, (_, reference) in ARTICLE_REFERENCE.items():
        assert f"## {name}" in markdown and f"<h2>{name}</h2>" in page
        assert f"{reference:.1f}" in markdown and f"{reference:.1f}" in page
    assert "| benchmark | metric | ours | blind | refused | article |" in markdown
    assert "| 3 of 4 |" in markdown


def test_the_blind_baseline_intervals_and_refusals(tmp_path, nano_model, tokenizer, suites):
    engine = Engine(nano_model, tokenizer)
    seen: list = []
    original = engine.generate

    def recording(requests):
        seen.extend(r.images[0].getextrema() for r in requests)
        return original(requests)

    engine.generate = recording
    results = run_eval(engine, EvalConfig(benchmarks=["gqa", "vqarad"], out_dir=str(tmp_path), data_root=str(suites),
                                          blind=True, **FAST))
    grey = ((128, 128),) * 3
    assert seen.count(grey) == 8 and len(seen) == 16  # every question once with its image, once with grey
    gqa, vqarad = results["benchmarks"]["gqa"], results["benchmarks"]["vqarad"]
    assert gqa["interval"] is not None and "accuracy" in gqa["blind"]["metrics"]
    assert vqarad["interval"] is None  # BLEU-4 is a corpus score
    assert 0.0 <= gqa["refused"] <= 1.0
    scores = [row["scores"]["accuracy"] for row in gqa["items"]]
    mean = sum(scores) / 4
    expected = 100 * 1.96 * (sum((x - mean) ** 2 for x in scores) / 3 / 4) ** 0.5
    assert gqa["interval"] == pytest.approx(expected)


def test_cli_eval(tmp_path, checkpoint, capsys, suites):
    out = tmp_path / "eval"
    code = main(["eval", "--model", str(checkpoint), "--benchmarks", "gqa, chartqa", "--out", str(out),
                 "--data-root", str(suites),
                 "--limit", "2", *(arg for key, value in FAST.items() for arg in ("--set", f"{key}={value}"))])
    assert code == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert list(results["benchmarks"]) == ["gqa", "chartqa"]
    assert [b["count"] for b in results["benchmarks"].values()] == [2, 2]
    printed = capsys.readouterr().out
    assert "gqa: accuracy" in printed and "(article 78.3)" in printed and "report.md" in printed


def test_unknown_benchmark_lists_the_registered_ones(capsys):
    assert main(["eval", "--model", "nowhere", "--benchmarks", "vqav2,mmmu", "--data-root", "x"]) == 2
    error = capsys.readouterr().err
    assert "unknown benchmark 'mmmu'" in error and "chartqa" in error and "vqarad" in error
    with pytest.raises(VlstackError, match="unknown benchmark 'nope'"):
        EvalConfig(paths={"nope": "x"})


def test_missing_data_is_a_clear_error_before_the_model_loads(tmp_path):
    def evaluate(data_root):
        run_eval(tmp_path / "no-checkpoint", EvalConfig(benchmarks=["gqa"], data_root=str(data_root),
                                                        out_dir=str(tmp_path / "eval")))

    with pytest.raises(DataError, match="data root .*absent is not a directory"):
        evaluate(tmp_path / "absent")
    with pytest.raises(ConfigError, match="no data for gqa: pass --data-root DIR.*vlstack data synth-eval DIR"):
        run_eval(tmp_path / "no-checkpoint", EvalConfig(benchmarks=["gqa"], out_dir=str(tmp_path / "eval")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(VlstackError, match="gqa: data folder .* does not exist; pass --data-root"):
        evaluate(tmp_path / "empty")
    write_suites(tmp_path / "data", n=2)
    (tmp_path / "data" / "gqa" / "testdev_balanced_questions.json").unlink()
    with pytest.raises(DataError, match="GQA questions file .*testdev_balanced_questions.json does not exist"):
        evaluate(tmp_path / "data")


def test_an_unreadable_image_is_counted_not_dropped(tmp_path, nano_model, tokenizer):
    folders = write_suites(tmp_path / "data", n=2)
    (folders["gqa"] / "images" / "n000000.jpg").write_bytes(b"not an image")
    results = run_eval(Engine(nano_model, tokenizer),
                       EvalConfig(benchmarks=["gqa"], paths={"gqa": str(folders["gqa"])}, out_dir=str(tmp_path / "eval"),
                                  max_new_tokens=3))
    bench = results["benchmarks"]["gqa"]
    assert (bench["count"], bench["missing"], bench["errors"]) == (2, 1, 1)
    first = bench["items"][0]
    assert first["status"] == "missing" and "cannot identify image" in first["error"] and first["raw"] is None
    assert "1 missing (1 not asked)" in (tmp_path / "eval" / "report.md").read_text(encoding="utf-8")


def test_a_template_asks_the_same_questions_another_way(tmp_path, nano_model, tokenizer, suites):
    engine = Engine(nano_model, tokenizer)
    asked: list = []
    original = engine.generate

    def recording(requests):
        asked.extend(r.messages[-1]["content"] for r in requests)
        return original(requests)

    engine.generate = recording
    templates = {"gqa": "Tell me: {question}", "aokvqa": "{question}\nOptions:\n{options}\nChoose the right option."}
    results = run_eval(engine, EvalConfig(benchmarks=["gqa", "aokvqa"], out_dir=str(tmp_path), data_root=str(suites),
                                          templates=templates, **FAST))
    assert all(text.startswith("<image>\nTell me: ") for text in asked[:4])
    assert all("\nOptions:\nA. " in text and text.endswith("Choose the right option.") for text in asked[4:])
    assert results["benchmarks"]["gqa"]["prompt"] == "Tell me: {question}"
    assert "Prompt: 'Tell me: {question}'" in (tmp_path / "report.md").read_text(encoding="utf-8")
    with pytest.raises(ConfigError, match="templates.gqa 'Tell me' has no {question}"):
        EvalConfig(templates={"gqa": "Tell me"})
