"""Synthetic mini-suites: tiny benchmark folders in the official file formats, made by vlstack's generators.

With them the harness, the demo and the tests run every benchmark end to end, with
its real loader and metric, and no downloaded data. Each suite is a pure function of
(n, seed): shape-scene VQA (`vlstack.synthetic.scenes`) for VQAv2, GQA and A-OKVQA,
documents for DocVQA, charts for ChartQA, and grayscale scans with a bright lesion
(`vlstack.synthetic.scans`) for VQA-RAD. Files and folders carry the official names, so
`BENCHMARKS[name].from_root(folder)` reads a suite exactly as it reads the real data.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from vlstack.data.schema import Sample
from vlstack.eval.benchmarks import BENCHMARKS, aokvqa, chartqa, docvqa, gqa, vqarad, vqav2
from vlstack.eval.harness import HALLUCINATION_DIR
from vlstack.files import write_json
from vlstack.synthetic.charts import chart_sample
from vlstack.synthetic.documents import document_sample
from vlstack.synthetic.hallucination import write_hallucination_suite
from vlstack.synthetic.scans import scan, scan_question
from vlstack.synthetic.scenes import COLORS, SHAPES, vqa_sample

SCENE_STREAM = 1_000_000
"""Scene-index offset between the suites built from shape scenes, so that no two share a scene."""
SCAN_STREAM = 500_000
"""Index offset of VQA-RAD's scans: `synthetic.scans` draws scan (seed, index) from seed * 1,000,003 + index, so
no scan of a dataset (any seed, indices in the thousands) is one of the suite's."""
VQA_TYPES = {  # shape-scene question type -> (VQAv2 question_type, answer_type, GQA semantic type)
    "color": ("what color is the", "other", "attr"),
    "shape": ("what", "other", "obj"),
    "count": ("how many", "number", "obj"),
    "count_color": ("how many", "number", "attr"),
    "position": ("where is the", "other", "rel"),
}
DISTRACTORS = {  # A-OKVQA wrong choices by question type
    "color": tuple(COLORS),
    "shape": (*SHAPES, "star", "hexagon"),
    "count": ("0", "1", "2", "3", "4"),
    "count_color": ("0", "1", "2", "3", "4"),
    "position": ("left", "right", "center", "top"),
}
DOC_QUESTION_TYPES = {"form": "form", "receipt": "table/list", "invoice": "layout"}


def write_suites(root: str | Path, n: int = 8, seed: int = 0) -> dict[str, Path]:
    """Write every suite, `n` questions each, under `root/<data_dir>`; returns benchmark name -> folder."""
    root = Path(root)
    for data_dir, writer in WRITERS.items():
        writer(root / data_dir, n, seed)
    return {name: root / cls.data_dir for name, cls in BENCHMARKS.items() if cls.data_dir in WRITERS}


def write_evaluation_data(root: str | Path, n: int = 32, scenes: int = 200, seed: int = 0) -> dict[str, Path]:
    """Every benchmark suite (`n` questions each) and a hallucination suite (`scenes` scenes per split)
    under `root`, as `vlstack eval --data-root` reads them; returns name -> folder."""
    folders = write_suites(root, n, seed)
    folders["hallucination"] = write_hallucination_suite(Path(root) / HALLUCINATION_DIR, scenes, scenes, seed=seed)
    return folders


def write_vqav2(folder: Path, n: int, seed: int) -> None:
    """`v2_OpenEnded_mscoco_val2014_questions.json`, `v2_mscoco_val2014_annotations.json`, `val2014/`;
    the ten human answers of each question agree."""
    subtype = "val2014"
    header = {"info": _INFO, "license": _LICENSE, "data_type": "mscoco", "data_subtype": subtype}
    questions, annotations = [], []
    for index in range(n):
        sample = vqa_sample(seed, index)
        image_id, answer = index + 1, sample.answers[0]
        question_type, answer_type, _ = VQA_TYPES[sample.meta["question_type"]]
        _save_image(sample, folder / subtype / vqav2.IMAGE_NAME.format(subtype=subtype, image_id=image_id))
        questions.append({"image_id": image_id, "question": sample.question, "question_id": image_id * 1000})
        annotations.append({"question_id": image_id * 1000, "image_id": image_id, "question_type": question_type,
                            "answer_type": answer_type, "multiple_choice_answer": answer,
                            "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1}
                                        for k in range(vqav2.ANSWERS_PER_QUESTION)]})
    write_json(folder / vqav2.QUESTIONS.format(split=subtype),
                {**header, "task_type": "Open-Ended", "questions": questions})
    write_json(folder / vqav2.ANNOTATIONS.format(split=subtype), {**header, "annotations": annotations})


def write_gqa(folder: Path, n: int, seed: int) -> None:
    """`testdev_balanced_questions.json` and `images/`; every other question is a binary "verify" one."""
    questions = {}
    for index in range(n):
        sample = vqa_sample(seed, SCENE_STREAM + index)
        image_id, question_id = f"n{index:06d}", str(20_000_000 + index)
        _save_image(sample, folder / gqa.IMAGES / f"{image_id}.jpg")
        if index % 2:
            question, answer = _verify_question(sample, random.Random(f"gqa:{seed}:{index}"))
            structural, semantic, detailed = "verify", "obj", "existAttr"
        else:
            question, answer, detailed = sample.question, sample.answers[0], sample.meta["question_type"]
            structural, semantic = "query", VQA_TYPES[detailed][2]
        questions[question_id] = {
            "imageId": image_id, "question": question, "answer": answer, "fullAnswer": f"The answer is {answer}.",
            "isBalanced": True, "types": {"structural": structural, "semantic": semantic, "detailed": detailed},
            "groups": {"global": None, "local": None}, "entailed": [], "equivalent": [question_id],
            "semantic": [], "semanticStr": "", "annotations": {"question": {}, "answer": {}, "fullAnswer": {}}}
    write_json(folder / gqa.QUESTIONS.format(split="testdev_balanced"), questions)


def write_docvqa(folder: Path, n: int, seed: int) -> None:
    """`val/val_v1.0.json` (a `data` list) and `val/documents/*.png`."""
    split, data = "val", []
    for index in range(n):
        sample = document_sample(seed, index)
        document = f"syn{index:05d}"
        image = f"documents/{document}_1.png"
        _save_image(sample, folder / split / image)
        data.append({"questionId": index + 1, "question": sample.question,
                     "question_types": [DOC_QUESTION_TYPES[sample.meta["doc_type"]]], "image": image,
                     "docId": index + 1, "ucsf_document_id": document, "ucsf_document_page_no": "1",
                     "answers": sample.answers, "data_split": split})
    write_json(folder / split / docvqa.ANNOTATIONS.format(split=split),
                {"dataset_name": "docvqa", "dataset_split": split, "dataset_version": "1.0", "data": data})


def write_chartqa(folder: Path, n: int, seed: int) -> None:
    """`test/test_human.json` (imgname, query, label) and `test/png/`."""
    split, entries = "test", []
    for index in range(n):
        sample = chart_sample(seed, index)
        imgname = f"syn{index:05d}.png"
        _save_image(sample, folder / split / chartqa.IMAGES / imgname)
        entries.append({"imgname": imgname, "query": sample.question, "label": sample.answers[0]})
    write_json(folder / split / chartqa.ANNOTATIONS.format(split=split, subset="human"), entries)


def write_vqarad(folder: Path, n: int, seed: int) -> None:
    """`VQA_RAD Dataset Public.json` and `VQA_RAD Image Folder/`, every question in the test split: the `scans`
    instruction dataset's chest cross-sections (from an index stream it never draws), asked in VQA-RAD's forms."""
    entries = []
    for index in range(n):
        item = scan(seed, SCAN_STREAM + index)
        rng = random.Random(f"vqarad:{seed}:{index}")
        question, answer, question_type = scan_question(item, rng.choice(("presence", "side") if item.lesion
                                                                        else ("presence",)), "en", rng)
        image_name = f"synpic{index:05d}.jpg"
        path = folder / vqarad.IMAGES / image_name
        path.parent.mkdir(parents=True, exist_ok=True)
        item.image.save(path, "JPEG", quality=95)
        entries.append({"qid": index + 1, "image_name": image_name, "image_organ": "CHEST", "answer": answer,
                        "answer_type": "CLOSED" if answer in ("yes", "no") else "OPEN",
                        "question_type": question_type, "question": question, "phrase_type": "test_freeform"})
    write_json(folder / vqarad.ANNOTATIONS, entries)


def write_aokvqa(folder: Path, n: int, seed: int) -> None:
    """`aokvqa_v1p0_val.json` and COCO's `val2017/`; every fourth question is a difficult direct answer."""
    split, entries = "val", []
    for index in range(n):
        sample = vqa_sample(seed, 2 * SCENE_STREAM + index)
        rng = random.Random(f"aokvqa:{seed}:{index}")
        answer, kind = sample.answers[0], sample.meta["question_type"]
        choices = rng.sample([c for c in DISTRACTORS[kind] if c != answer], 3) + [answer]
        rng.shuffle(choices)
        _save_image(sample, folder / f"{split}2017" / f"{index + 1:012d}.jpg")
        entries.append({"split": split, "image_id": index + 1, "question_id": f"syn{seed}q{index:05d}",
                        "question": sample.question, "choices": choices, "correct_choice_idx": choices.index(answer),
                        "direct_answers": [answer] * 10, "difficult_direct_answer": index % 4 == 3,
                        "rationales": [f"Looking at the picture, the answer is {answer}."]})
    write_json(folder / aokvqa.ANNOTATIONS.format(split=split), entries)


WRITERS: dict[str, Callable[[Path, int, int], None]] = {
    "vqav2": write_vqav2, "gqa": write_gqa, "docvqa": write_docvqa, "chartqa": write_chartqa,
    "vqarad": write_vqarad, "aokvqa": write_aokvqa,
}
"""Suite writers by the benchmark folder (`Benchmark.data_dir`) they fill."""


def _verify_question(sample: Sample, rng: random.Random) -> tuple[str, str]:
    """A yes/no question on whether a shape of some colour is in the scene (GQA's "verify" structure), about
    one that is there half of the time, as the balanced split asks: drawn from all 18 kinds, 9 in 10 answers were
    "no", and a model answering "no" to everything scored 90% of them."""
    seen = {(o["color"], o["shape"]) for o in sample.meta["objects"][0]}
    present = rng.random() < 0.5
    color, shape = rng.choice(sorted(seen) if present else [(c, s) for c in COLORS for s in SHAPES if (c, s) not in seen])
    return f"Is there a {color} {shape} in the image?", "yes" if present else "no"


def _save_image(sample: Sample, path: Path) -> None:
    """The sample's (PNG) image at `path`, re-encoded as JPEG when the official files are JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = sample.images[0].data
    if path.suffix == ".png":
        path.write_bytes(data)
    else:
        Image.open(io.BytesIO(data)).convert("RGB").save(path, "JPEG", quality=95)


_INFO = {"description": "vlstack synthetic suite in the VQAv2 format", "version": "2.0", "year": 2024}
_LICENSE = {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"}
