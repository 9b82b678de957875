"""Each loader on a tiny fixture in its official schema; scoring rules; bad input."""

import json
from pathlib import Path

import pytest
from PIL import Image

from vlstack.errors import DataError, VlstackError
from vlstack.eval.benchmarks import BENCHMARKS, Benchmark, EvalItem, get_benchmark, register
from vlstack.eval.benchmarks.aokvqa import AOKVQA, AOKVQADirect
from vlstack.eval.benchmarks.chartqa import ChartQA
from vlstack.eval.benchmarks.docvqa import DocVQA
from vlstack.eval.benchmarks.gqa import GQA
from vlstack.eval.benchmarks.vqarad import VQARAD
from vlstack.eval.benchmarks.vqav2 import VQAv2


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (255, 0, 0)).save(path)
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False))
    return path


def vqav2_files(root: Path, answers=("2",) * 9 + ("two",)) -> Path:
    """Two questions on COCO_val2014 images, in the layout `VQAv2.from_root` expects."""
    header = {"info": {}, "license": {}, "data_type": "mscoco", "data_subtype": "val2014"}
    write_json(root / "v2_OpenEnded_mscoco_val2014_questions.json", {**header, "task_type": "Open-Ended", "questions": [
        {"image_id": 42, "question": "How many dogs?", "question_id": 42000},
        {"image_id": 42, "question": "Is it sunny?", "question_id": 42001}]})
    annotations = [
        {"question_id": 42000, "image_id": 42, "question_type": "how many", "answer_type": "number",
         "multiple_choice_answer": "2", "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                                     for i, a in enumerate(answers)]},
        {"question_id": 42001, "image_id": 42, "question_type": "is it", "answer_type": "yes/no",
         "multiple_choice_answer": "yes", "answers": [{"answer": "yes", "answer_confidence": "yes", "answer_id": i + 1}
                                                       for i in range(10)]}]
    write_json(root / "v2_mscoco_val2014_annotations.json", {**header, "annotations": annotations})
    image(root / "val2014" / "COCO_val2014_000000000042.jpg")
    return root


def test_vqav2_loader_and_score(tmp_path):
    bench = VQAv2.from_root(vqav2_files(tmp_path))
    first = bench.items[0]
    assert (first.id, first.question, first.meta["answer_type"]) == ("42000", "How many dogs?", "number")
    assert first.image == tmp_path / "val2014" / "COCO_val2014_000000000042.jpg" and len(first.answers) == 10
    result = bench.score({"42000": "Two.\nThere are two dogs.", "42001": "Yes"})
    assert [row["prediction"] for row in result["items"]] == ["2", "yes"]  # first line + vqaEval processing
    # "2" matches 9 of the processed answers ("two" -> "2" too): accuracy 1; "yes" matches all ten
    assert result["metrics"]["accuracy"] == pytest.approx(100.0)
    assert result["groups"]["number"]["count"] == 1 and result["groups"]["yes/no"]["accuracy"] == pytest.approx(100.0)


def test_vqav2_bad_annotations(tmp_path):
    with pytest.raises(DataError, match="10 answer objects"):
        VQAv2.from_root(vqav2_files(tmp_path / "short", answers=("2",) * 3))
    root = vqav2_files(tmp_path / "unannotated")
    path = root / "v2_mscoco_val2014_annotations.json"
    data = json.loads(path.read_text())
    data["annotations"].pop()
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="42001 has no annotation"):
        VQAv2.from_root(root)


def test_gqa_loader_keeps_balanced_questions(tmp_path):
    def question(image_id, text, answer, structural, balanced=True):
        return {"imageId": image_id, "question": text, "answer": answer, "fullAnswer": f"It is {answer}.",
                "isBalanced": balanced, "types": {"structural": structural, "semantic": "attr", "detailed": "x"}}
    write_json(tmp_path / "testdev_balanced_questions.json", {
        "201": question("n1", "What color is the car?", "red", "query"),
        "202": question("n1", "Is the car red?", "yes", "verify"),
        "203": question("n1", "Is the sky blue?", "no", "verify", balanced=False)})
    image(tmp_path / "images" / "n1.jpg")
    bench = GQA.from_root(tmp_path)
    assert [item.id for item in bench.items] == ["201", "202"]
    assert [item.meta["answer_kind"] for item in bench.items] == ["open", "binary"]
    result = bench.score({"201": "Red.", "202": "no"})
    assert result["metrics"]["accuracy"] == 50.0
    assert result["groups"]["open"]["accuracy"] == 100.0 and result["groups"]["binary"]["accuracy"] == 0.0
    everything = GQA.load(tmp_path / "testdev_balanced_questions.json", tmp_path / "images", balanced_only=False)
    assert len(everything.items) == 3


def test_docvqa_loader_and_anls(tmp_path):
    write_json(tmp_path / "val" / "val_v1.0.json", {"dataset_name": "docvqa", "dataset_split": "val", "data": [
        {"questionId": 49153, "question": "What is the date?", "question_types": ["form"],
         "image": "documents/pybv0228_81.png", "docId": 14465, "answers": ["0.28", ".28"], "data_split": "val"}]})
    image(tmp_path / "val" / "documents" / "pybv0228_81.png")
    bench = DocVQA.from_root(tmp_path)
    assert bench.items[0].id == "49153" and bench.items[0].answers == ["0.28", ".28"]
    assert bench.score({"49153": " .28 "})["metrics"]["anls"] == pytest.approx(100.0)
    assert bench.score({"49153": "0.29"})["metrics"]["anls"] == pytest.approx(75.0)


def test_docvqa_test_split_without_answers(tmp_path):
    write_json(tmp_path / "test" / "test_v1.0.json", {"data": [
        {"questionId": 1, "question": "q?", "image": "documents/a.png", "docId": 1}]})
    with pytest.raises(DataError, match="answers are private"):
        DocVQA.from_root(tmp_path, split="test")


def test_chartqa_loader_and_relaxed_accuracy(tmp_path):
    write_json(tmp_path / "test" / "test_human.json", [
        {"imgname": "41699051005347.png", "query": "What is the value of A?", "label": "50"},
        {"imgname": "41699051005347.png", "query": "Which is highest?", "label": "Apple"}])
    image(tmp_path / "test" / "png" / "41699051005347.png")
    bench = ChartQA.from_root(tmp_path)
    assert [item.id for item in bench.items] == ["test_human-0", "test_human-1"]
    result = bench.score({"test_human-0": "52", "test_human-1": "apple"})
    assert result["metrics"]["relaxed_accuracy"] == 100.0


def test_vqarad_loader_splits_and_scores(tmp_path):
    def entry(qid, answer, answer_type, phrase_type, question="Is there a mass?"):
        return {"qid": qid, "image_name": "synpic1.jpg", "image_organ": "CHEST", "answer": answer,
                "answer_type": answer_type, "question_type": "PRES", "question": question, "phrase_type": phrase_type}
    write_json(tmp_path / "VQA_RAD Dataset Public.json", [
        entry(1, "yes", "CLOSED ", "test_freeform"), entry(2, "right lung", "OPEN", "test_para", "Where?"),
        entry(3, 2, "OPEN", "freeform", "How many?")])
    image(tmp_path / "VQA_RAD Image Folder" / "synpic1.jpg")
    bench = VQARAD.from_root(tmp_path)
    assert [item.id for item in bench.items] == ["1", "2"]
    assert [item.meta["answer_type"] for item in bench.items] == ["closed", "open"]
    assert VQARAD.from_root(tmp_path, split="train").items[0].answers == ["2"]  # numbers become strings
    metrics = bench.score({"1": "Yes.", "2": "the right lung"})["metrics"]
    assert metrics["closed_accuracy"] == 100.0 and metrics["open_accuracy"] == 0.0
    assert metrics["open_recall"] == 100.0 and metrics["accuracy"] == 50.0
    assert set(metrics) >= {"bleu_1", "bleu_2", "bleu_3", "bleu_4"}
    with pytest.raises(DataError, match="unknown VQA-RAD split"):
        VQARAD.from_root(tmp_path, split="dev")


def aokvqa_files(root: Path) -> Path:
    def entry(qid, difficult):
        return {"split": "val", "image_id": 461751, "question_id": qid, "question": "What is the man holding?",
                "choices": ["umbrella", "bat", "kite", "phone"], "correct_choice_idx": 1,
                "direct_answers": ["bat"] * 3 + ["baseball bat"] * 7, "difficult_direct_answer": difficult,
                "rationales": ["He is at bat."]}
    write_json(root / "aokvqa_v1p0_val.json", [entry("22jbM6gDxdaMaunuzgrsBB", False), entry("x2", True)])
    image(root / "val2017" / "000000461751.jpg")
    return root


def test_aokvqa_multiple_choice(tmp_path):
    bench = AOKVQA.from_root(aokvqa_files(tmp_path))
    item = bench.items[0]
    assert item.image == tmp_path / "val2017" / "000000461751.jpg" and len(bench.items) == 2
    assert bench.prompt(item).splitlines()[1:3] == ["A. umbrella", "B. bat"]
    for reply in ("B", "(B)", "B.", "B. bat", "Bat."):
        assert bench.postprocess(item, reply) == "bat"
    assert bench.postprocess(item, "A bat") == "A bat"  # "A" followed by a word is an article, not a letter
    assert bench.postprocess(item, "Z") == "Z"
    assert bench.score({"22jbM6gDxdaMaunuzgrsBB": "B", "x2": "A"})["metrics"]["mc_accuracy"] == 50.0


def test_aokvqa_direct_answer_leaves_out_difficult_questions(tmp_path):
    bench = AOKVQADirect.from_root(aokvqa_files(tmp_path))
    assert [item.id for item in bench.items] == ["22jbM6gDxdaMaunuzgrsBB"]
    assert "A. umbrella" not in bench.prompt(bench.items[0])
    assert bench.score({"22jbM6gDxdaMaunuzgrsBB": "Bat."})["metrics"]["da_accuracy"] == pytest.approx(100.0)
    assert bench.score({"22jbM6gDxdaMaunuzgrsBB": "baseball bat"})["metrics"]["da_accuracy"] == pytest.approx(100.0)


def test_missing_and_empty_predictions_score_zero_and_are_counted(tmp_path):
    bench = AOKVQA.from_root(aokvqa_files(tmp_path))
    result = bench.score({"x2": "  \n"})
    assert (result["count"], result["missing"], result["empty"]) == (2, 1, 1)
    assert result["metrics"]["mc_accuracy"] == 0.0
    assert [row["status"] for row in result["items"]] == ["missing", "empty"]
    assert bench.score({"22jbM6gDxdaMaunuzgrsBB": "B", "x2": None})["metrics"]["mc_accuracy"] == 50.0


def test_predictions_for_unknown_ids_are_an_error(tmp_path):
    bench = AOKVQA.from_root(aokvqa_files(tmp_path))
    with pytest.raises(DataError, match="not questions of aokvqa"):
        bench.score({"22jbM6gDxdaMaunuzgrsBB": "B", "nope": "A"})
    with pytest.raises(DataError, match="not a str"):
        bench.score({"x2": 1})


def test_vqarad_blank_predictions_zero_every_metric(tmp_path):
    write_json(tmp_path / "VQA_RAD Dataset Public.json", [
        {"qid": 1, "image_name": "a.jpg", "answer": "no", "answer_type": "CLOSED", "question": "Mass?",
         "phrase_type": "test_freeform"}])
    image(tmp_path / "VQA_RAD Image Folder" / "a.jpg")
    metrics = VQARAD.from_root(tmp_path).score({"1": ""})["metrics"]
    assert metrics["closed_accuracy"] == 0.0 and metrics["bleu_1"] == 0.0


@pytest.mark.parametrize("breakage, message", [
    (lambda root: (root / "aokvqa_v1p0_val.json").unlink(), "does not exist"),
    (lambda root: (root / "aokvqa_v1p0_val.json").write_text("[{"), "not valid JSON"),
    (lambda root: (root / "aokvqa_v1p0_val.json").write_text('{"data": []}'), "must hold a JSON list"),
    (lambda root: (root / "val2017" / "000000461751.jpg").unlink(), "images are missing"),
    (lambda root: write_json(root / "aokvqa_v1p0_val.json", [{"question_id": "q"}]), "direct_answers"),
    (lambda root: write_json(root / "aokvqa_v1p0_val.json", [{"direct_answers": ["a"], "question_id": "q"}]),
     "'difficult_direct_answer' must be bool"),
    (lambda root: write_json(root / "aokvqa_v1p0_val.json", []), "no questions"),
])
def test_bad_files_are_clear_errors(tmp_path, breakage, message):
    root = aokvqa_files(tmp_path)
    breakage(root)
    with pytest.raises(DataError, match=message):
        AOKVQA.from_root(root)


def test_repeated_ids_and_wrong_types_are_errors(tmp_path):
    root = aokvqa_files(tmp_path)
    data = json.loads((root / "aokvqa_v1p0_val.json").read_text())
    write_json(root / "aokvqa_v1p0_val.json", [data[0], data[0]])
    with pytest.raises(DataError, match="ids repeat"):
        AOKVQA.from_root(root)
    write_json(root / "aokvqa_v1p0_val.json", [{**data[0], "image_id": True}])
    with pytest.raises(DataError, match="'image_id' must be int"):
        AOKVQA.from_root(root)
    with pytest.raises(DataError, match="not a directory"):
        AOKVQA.load(root / "aokvqa_v1p0_val.json", root / "nowhere")


def test_registry():
    assert set(BENCHMARKS) >= {"vqav2", "gqa", "docvqa", "chartqa", "vqarad", "aokvqa", "aokvqa_da"}
    assert get_benchmark("gqa") is GQA and GQA.name == "gqa"
    with pytest.raises(VlstackError, match="valid: aokvqa"):
        get_benchmark("mmmu")
    with pytest.raises(VlstackError, match="registered twice"):
        register("gqa")(type("Again", (GQA,), {}))


def test_a_new_benchmark_is_one_class(tmp_path):
    @register("toy-test")
    class Toy(Benchmark):
        data_dir, primary = "toy", "accuracy"

        @classmethod
        def from_root(cls, root):
            return cls([EvalItem("1", Path(root) / "a.png", "什么颜色？", ["红色"])])

        def score_item(self, item, prediction):
            return {"accuracy": float(prediction == item.answers[0])}

    try:
        bench = BENCHMARKS["toy-test"].from_root(tmp_path)
        assert bench.prompt(bench.items[0]) == "什么颜色？\n请用一个词或短语回答。"
        assert bench.score({"1": "红色\n因为……"})["metrics"] == {"accuracy": 100.0}
    finally:
        del BENCHMARKS["toy-test"]
