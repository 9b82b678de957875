"""Readers that turn the common public formats into `Sample`s.

Every reader yields `Sample | Rejected`: a malformed record, an unreadable file or
a missing image becomes a `Rejected` with a reason code, and the reader goes on,
so a cleaning run can account for every input. Images are read as bytes and not
decoded here; the cleaning pipeline's decode stage judges them. Wrong arguments
(a file that does not exist) are a `DataError` at once, before any work.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from vlstack.data.schema import IMAGE_EXTENSIONS, IMAGE_TOKEN, ImageRef, Rejected, Sample, image_name
from vlstack.data.shards import TarGroup, iter_tar, oversized
from vlstack.errors import DataError
from vlstack.files import read_json, read_jsonl

Item = Sample | Rejected


def read_image_folder(root: str | Path, captions: str | Path) -> Iterator[Item]:
    """A folder of images and a captions file naming them (paths relative to `root`).

    `captions` is JSON lines (`{"image": ..., "caption": ..., "id"?: ...}`) or a
    CSV/TSV with a header that has `image` and `caption` columns. Images that no
    caption names are reported as `no_caption`, so the whole folder is accounted for.
    """
    root, captions = _existing(root), _existing(captions)
    named: set[str] = set()
    for number, record in _caption_records(captions):
        if isinstance(record, Rejected):
            yield record
            continue
        image, caption = record.get("image"), record.get("caption", record.get("text"))
        if not isinstance(image, str):
            given_id = None if record.get("id") is None else str(record["id"])
            yield Rejected(given_id, "bad_record", f"line {number}: no string 'image'", str(captions))
            continue
        named.add(Path(image).as_posix())
        sample_id = str(record.get("id") or Path(image).with_suffix("").as_posix())
        if not isinstance(caption, str):
            yield Rejected(sample_id, "bad_record", f"line {number}: no string 'caption'", str(captions))
            continue
        meta = {"source": "image_folder"}
        yield _build(Sample(sample_id, "caption", text=caption, meta=meta), root, [image], f"{captions}:{number}")
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS):
        relative = path.relative_to(root).as_posix()
        if relative not in named:
            yield Rejected(path.relative_to(root).with_suffix("").as_posix(), "no_caption",
                           f"no line of {captions.name} names {relative}", str(path))


def read_llava(path: str | Path, image_root: str | Path) -> Iterator[Item]:
    """LLaVA instruction data: a JSON array or JSON lines of `{id, image, conversations}`, optionally with
    `rejected` (a preference pair's rejected answer) and `meta` (kept in `Sample.meta`).

    A record without `<image>` in its turns gets one per image in front of its first
    human turn, as LLaVA's own preprocessing does. A record without `image` is a
    text-only conversation (LLaVA-665K mixes in ShareGPT chats) and is kept as one.
    """
    yield from _instruction_records(path, image_root, lambda record: _llava_record)


def read_messages(path: str | Path, image_root: str | Path) -> Iterator[Item]:
    """OpenAI-style chat data: a JSON array or JSON lines of `{id?, messages}`.

    A message is `{"role": "system" | "user" | "assistant", "content": ...}`, the content a
    string or a list of parts: `{"type": "text", "text": ...}`, `{"type": "image_url",
    "image_url": {"url": ...}}` or `{"type": "image", "image": ...}`, where the image is a path
    under `image_root` or a `data:image/...;base64,` URL (a remote URL is `unsupported_image`:
    nothing is downloaded). Parts are joined with newlines, each image becoming `<image>`; a
    leading system message goes to `meta["system"]`. A record without image parts is a
    text-only conversation.
    """
    yield from _instruction_records(path, image_root, lambda record: _messages_record)


def read_conversations(path: str | Path, image_root: str | Path) -> Iterator[Item]:
    """Instruction data in either format, chosen per record: `messages` (OpenAI) or `conversations` (LLaVA)."""
    yield from _instruction_records(
        path, image_root, lambda record: _messages_record if "messages" in record else _llava_record)


def _instruction_records(path: str | Path, image_root: str | Path, parser_for) -> Iterator[Item]:
    path, image_root = _existing(path), _existing(image_root)
    records = _json_lines(path) if path.suffix == ".jsonl" else _json_array(path)
    for number, record in records:
        if isinstance(record, Rejected):
            yield record
            continue
        sample_id = str(record.get("id", f"{path.stem}-{number}"))
        yield parser_for(record)(record, sample_id, image_root, f"{path}:{number}")


def _llava_record(record: dict, sample_id: str, image_root: Path, where: str, source: str = "llava") -> Item:
    images = _as_list(record.get("image"))
    turns = record.get("conversations")
    if not isinstance(images, list) or not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        return Rejected(sample_id, "bad_record", "needs 'conversations' (a list) and, unless text-only, 'image' "
                                                 "(a path or a list of paths)", where)
    turns = [{"from": t.get("from"), "value": t.get("value")} for t in turns]
    _add_image_tokens(turns, len(images))
    meta = {**(record["meta"] if isinstance(record.get("meta"), dict) else {}), "source": source}
    if isinstance(record.get("rejected"), str):  # a preference pair's rejected answer (DPO data)
        meta["rejected"] = record["rejected"]
    return _build(Sample(sample_id, "vqa", conversations=turns, meta=meta), image_root, images, where)


_MESSAGE_ROLES = {"user": "human", "assistant": "gpt"}


def _messages_record(record: dict, sample_id: str, image_root: Path, where: str) -> Item:
    messages = record.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return Rejected(sample_id, "bad_record", "'messages' must be a list of {role, content} objects", where)
    meta: dict[str, Any] = {"source": "messages"}
    if messages and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
        meta["system"], messages = messages[0]["content"], messages[1:]
    turns, images = [], []
    for position, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in _MESSAGE_ROLES:
            return Rejected(sample_id, "bad_record", f"message {position} has role {role!r}; after an optional "
                                                     "leading system message, roles are user or assistant", where)
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
            return Rejected(sample_id, "bad_record", f"message {position}: content must be a string or a list of "
                                                     "parts", where)
        pieces = []
        for part in parts:
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                pieces.append(part["text"])
            elif part.get("type") in ("image", "image_url"):
                pieces.append(IMAGE_TOKEN)
                images.append(_image_reference(part))
            else:
                return Rejected(sample_id, "bad_record", f"message {position}: unknown part {part!r}", where)
        turns.append({"from": _MESSAGE_ROLES[role], "value": "\n".join(pieces)})
    return _build(Sample(sample_id, "vqa", conversations=turns, meta=meta), image_root, images, where)


def _image_reference(part: dict) -> Any:
    """The image of a part: a path or URL (`image_url` may be a string or `{"url": ...}`), or the bytes or
    `{"bytes", "path"}` of a Hugging Face image."""
    value = part.get(part["type"])
    return value.get("url") if isinstance(value, dict) and "url" in value else value


def _image_bytes(reference: Any, root: Path) -> tuple[str, bytes] | str:
    """(extension, bytes) of an image reference, or "reason: detail" when it cannot be read.

    A reference is a path under `root`, a `data:image/...;base64,` URL, encoded bytes, or a Hugging Face
    `Image` feature's `{"bytes", "path"}` (bytes when it has them, else the path)."""
    if isinstance(reference, dict):
        data, name = reference.get("bytes"), reference.get("path")
        reference = data if isinstance(data, bytes) else name
    if isinstance(reference, bytes):
        return _sniffed(reference)
    if not isinstance(reference, str) or not reference:
        return f"bad_record: an image reference must be a path, a data URL or image bytes, got {reference!r}"
    if reference.startswith("data:"):
        header, _, payload = reference.partition(",")
        extension = header.removeprefix("data:").split(";")[0].removeprefix("image/").replace("jpeg", "jpg")
        if extension not in IMAGE_EXTENSIONS or ";base64" not in header:
            return f"unsupported_image: a data URL must be data:image/<{'|'.join(IMAGE_EXTENSIONS)}>;base64,..."
        try:
            return extension, base64.b64decode(payload, validate=True)
        except binascii.Error as error:
            return f"unsupported_image: bad base64 in a data URL ({error})"
    if reference.startswith(("http://", "https://")):
        return f"unsupported_image: {reference} is remote; download it and give a path under the image root"
    file = _under_root(root, reference.removeprefix("file://"))
    if isinstance(file, str):
        return file
    extension = file.suffix.lower().lstrip(".")
    if extension not in IMAGE_EXTENSIONS:
        return f"unsupported_image: {reference!r}: not one of {IMAGE_EXTENSIONS}"
    try:
        return extension, file.read_bytes()
    except OSError as error:
        return f"missing_image: {file}: {error.strerror or error}"


def read_coco_captions(path: str | Path, image_root: str | Path) -> Iterator[Item]:
    """COCO captions (`captions_*.json`): one sample per image, its first caption as `text`, all in `answers`."""
    path, image_root = _existing(path), _existing(image_root)
    data = _load_json(path)
    if isinstance(data, Rejected):
        yield data
        return
    captions: dict[Any, list[str]] = defaultdict(list)
    for annotation in _objects(data, "annotations", path):
        if isinstance(annotation, Rejected):
            yield annotation
        elif isinstance(annotation.get("caption"), str) and annotation["caption"].strip():
            captions[annotation.get("image_id")].append(annotation["caption"].strip())
    known = set()
    for image in _objects(data, "images", path):
        if isinstance(image, Rejected):
            yield image
            continue
        sample_id, file_name = str(image.get("id")), image.get("file_name")
        known.add(image.get("id"))
        if not isinstance(file_name, str):
            yield Rejected(sample_id, "bad_record", "image entry without 'file_name'", str(path))
        elif not captions.get(image.get("id")):
            yield Rejected(sample_id, "no_caption", f"no annotation has image_id {image.get('id')}", str(path))
        else:
            texts = captions[image["id"]]
            meta = {"source": "coco_captions", "license": image.get("license")}
            sample = Sample(sample_id, "caption", text=texts[0], answers=texts, meta=meta)
            yield _build(sample, image_root, [file_name], str(path))
    for image_id in sorted(set(captions) - known, key=str):
        yield Rejected(str(image_id), "unknown_image", "annotations for an image_id not in 'images'", str(path))


def vqav2_questions(questions: str | Path, annotations: str | Path) -> tuple[str, Iterator[dict | Rejected]]:
    """The one VQAv2 parser (the data reader and the benchmark both use it): COCO's default image name
    pattern from the questions file (`COCO_{data_subtype}_{image_id:012d}.jpg`), and each question joined
    with its annotation, `{question_id, image_id, question, answers, answer_type, question_type,
    multiple_choice_answer}`, or a `Rejected` saying what is wrong with it."""
    questions, annotations = _existing(questions), _existing(annotations)
    question_data, annotation_data = _load_json(questions), _load_json(annotations)
    bad = next((data for data in (question_data, annotation_data) if isinstance(data, Rejected)), None)
    if bad is not None:
        return "", iter([bad])
    pattern = f"COCO_{question_data.get('data_subtype', 'unknown')}_{{image_id:012d}}.jpg"
    return pattern, _vqav2_records(question_data, annotation_data, questions, annotations)


def _vqav2_records(question_data: dict, annotation_data: dict, questions: Path, annotations: Path
                   ) -> Iterator[dict | Rejected]:
    by_question = {a.get("question_id"): a for a in _objects(annotation_data, "annotations", annotations)
                   if not isinstance(a, Rejected)}
    for question in _objects(question_data, "questions", questions):
        if isinstance(question, Rejected):
            yield question
            continue
        sample_id, where = str(question.get("question_id")), str(questions)
        annotation = by_question.get(question.get("question_id"))
        if not isinstance(question.get("image_id"), int) or not isinstance(question.get("question"), str):
            yield Rejected(sample_id, "bad_record", "question needs an int 'image_id' and a string 'question'", where)
        elif annotation is None:
            yield Rejected(sample_id, "no_answers", f"question {sample_id} has no annotation in {annotations}", where)
        else:
            answers = [a["answer"] for a in annotation.get("answers", []) if isinstance(a, dict) and "answer" in a]
            yield {"question_id": question["question_id"], "image_id": question["image_id"],
                   "question": question["question"], "answers": answers,
                   **{k: annotation.get(k) for k in ("multiple_choice_answer", "answer_type", "question_type")}}


def read_vqav2(
    questions: str | Path, annotations: str | Path, image_root: str | Path, image_pattern: str | None = None
) -> Iterator[Item]:
    """VQAv2 questions + annotations: one sample per question, the ten human answers in `answers`.

    Images are found by `image_pattern` (e.g. `"{image_id:012d}.jpg"`), by default
    COCO's `COCO_{data_subtype}_{image_id:012d}.jpg` from the questions file.
    """
    image_root = _existing(image_root)
    default_pattern, records = vqav2_questions(questions, annotations)
    for record in records:
        if isinstance(record, Rejected):
            yield record
            continue
        meta = {"source": "vqav2", **{k: record[k] for k in ("image_id", "multiple_choice_answer", "answer_type",
                                                             "question_type")}}
        sample = Sample(str(record["question_id"]), "vqa", question=record["question"], answers=record["answers"],
                        meta=meta)
        yield _build(sample, image_root, [(image_pattern or default_pattern).format(image_id=record["image_id"])],
                     str(questions))


def read_img2dataset(path: str | Path) -> Iterator[Item]:
    """img2dataset output: WebDataset tars (`.jpg` + `.txt` + `.json`), or parquet with image bytes.

    With `output_format=webdataset` img2dataset also writes a metadata parquet per
    tar; those are skipped (their failed rows never became inputs). Parquet needs
    `pyarrow`, imported only when a parquet file is read.
    """
    path = _existing(path)
    files = [path] if path.is_file() else sorted(path.glob("*.tar")) + sorted(path.glob("*.parquet"))
    for file in files:
        if file.suffix == ".tar":
            for group in iter_tar(file):
                if isinstance(group, Rejected):
                    yield group
                elif group.oversized:
                    yield oversized(group)
                else:
                    yield _img2dataset_sample(group)
        elif not file.with_suffix(".tar").exists():
            yield from _img2dataset_parquet(file)


def _img2dataset_sample(group: TarGroup) -> Item:
    where = f"{group.source}:{group.key}"
    try:
        info = json.loads(group.files["json"]) if "json" in group.files else {}
        info = info if isinstance(info, dict) else {}
        caption = group.files["txt"].decode("utf-8") if "txt" in group.files else info.get("caption")
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return Rejected(group.key, "bad_record", str(error), where)
    extension = next((e for e in IMAGE_EXTENSIONS if e in group.files), None)
    if extension is None:
        return Rejected(group.key, "missing_image", f"members {sorted(group.files)} hold no image", where)
    meta = {"source": "img2dataset", "url": info.get("url")}
    sample = Sample(group.key, "caption", [ImageRef(extension, group.files[extension])], text=caption or "", meta=meta)
    return _validated(sample, where)


def _img2dataset_parquet(path: Path) -> Iterator[Item]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise DataError(f"reading {path} needs pyarrow: pip install pyarrow") from error
    try:
        table = pq.ParquetFile(path)
        columns = table.schema_arrow.names
        batches = table.iter_batches(batch_size=256)
        extension = next((e for e in IMAGE_EXTENSIONS if e in columns), None)
        if extension is None:
            yield Rejected(None, "no_image_column", f"columns {columns} hold no image bytes", str(path))
            return
        for batch in batches:
            for row in batch.to_pylist():
                yield _parquet_row(row, extension, str(path))
    except (OSError, ValueError) as error:  # pyarrow's errors derive from these
        yield Rejected(None, "unreadable_parquet", f"{type(error).__name__}: {error}", str(path))


def _parquet_row(row: dict[str, Any], extension: str, source: str) -> Item:
    key = str(row.get("key"))
    if row.get("status", "success") != "success" or not row.get(extension):
        return Rejected(key, "download_failed", str(row.get("error_message") or "no image bytes"), source)
    meta = {"source": "img2dataset", "url": row.get("url")}
    sample = Sample(key, "caption", [ImageRef(extension, row[extension])], text=row.get("caption") or "", meta=meta)
    return _validated(sample, source)


def _sniffed(data: bytes) -> tuple[str, bytes] | str:
    """(extension, bytes) of image bytes with no file name, from their header."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            extension = (image.format or "").lower().replace("jpeg", "jpg")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return f"undecodable_image: {type(error).__name__}: {error}"
    if extension not in IMAGE_EXTENSIONS:
        return f"unsupported_image: a {extension or 'unknown'} image is not one of {IMAGE_EXTENSIONS}"
    return extension, data


def _as_list(value: Any) -> Any:
    """An image field as a list: absent is no image, one reference is a list of one."""
    if value is None:
        return []
    return [value] if isinstance(value, (str, bytes, dict)) else value


def read_hf_dataset(path: str | Path, image_root: str | Path | None = None) -> Iterator[Item]:
    """A Hugging Face `datasets` corpus on disk: a `save_to_disk` directory (a Dataset, or a DatasetDict,
    every split) or parquet files (a file, or every `*.parquet` under a directory, as the Hub stores them).

    A row's images are its `image` or `images` column (an `Image` feature, bytes, or a path under
    `image_root`, by default the corpus folder). Its text is, by the first column present:
    `conversations` (LLaVA turns), `messages` (OpenAI; `{"type": "image"}` parts take the row's images
    in order), `texts` (`[{user, assistant}]`, as in the_cauldron), `question` with `answers` or
    `answer` (VQA), or `caption` / `text` (a caption). Rows are read in batches and images are not
    decoded, so a large corpus streams. Needs `datasets` (pip install 'vlstack[hf]') for `save_to_disk`
    directories and `pyarrow` for parquet.
    """
    path = _existing(path)
    root = _existing(image_root) if image_root is not None else path if path.is_dir() else path.parent
    for name, batches in _hf_tables(path):
        number = 0
        try:
            for batch in batches:
                for row in batch.to_pylist():
                    sample_id = str(row["id"]) if row.get("id") is not None else f"{name}-{number:09d}"
                    yield _hf_row(row, sample_id, root, f"{path}:{name}:{number}")
                    number += 1
        except (OSError, ValueError) as error:  # pyarrow's errors derive from these
            yield Rejected(None, "unreadable_parquet", f"{type(error).__name__}: {error} after {number} row(s)",
                           f"{path}:{name}")


def _hf_tables(path: Path) -> Iterator[tuple[str, Iterator[Any]]]:
    """(name, record batches) of each split of a `save_to_disk` directory or each parquet file."""
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        try:
            import datasets
        except ImportError as error:
            raise DataError(f"reading the datasets directory {path} needs datasets: pip install 'vlstack[hf]'") \
                from error
        loaded = datasets.load_from_disk(str(path))
        splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(path.name, loaded)]
        for split, dataset in splits:
            yield split, iter(dataset.data.to_batches(max_chunksize=256))
        return
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    if not files:
        raise DataError(f"{path} holds no dataset_dict.json or state.json (save_to_disk) and no *.parquet files")
    for file in files:
        yield (file.relative_to(path).with_suffix("").as_posix() if path.is_dir() else file.stem), _parquet_batches(file)


def _parquet_batches(file: Path) -> Iterator[Any]:
    """Record batches of a parquet file, opened on the first read (so a broken file fails inside the loop
    that rejects it)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise DataError(f"reading {file} needs pyarrow: pip install 'vlstack[hf]'") from error
    yield from pq.ParquetFile(file).iter_batches(batch_size=256)


def _hf_row(row: dict[str, Any], sample_id: str, root: Path, where: str) -> Item:
    images = _as_list(row.get("images", row.get("image")))
    if not isinstance(images, list):
        return Rejected(sample_id, "bad_record", "'image' / 'images' must be an image or a list of images", where)
    if row.get("conversations") is not None:
        return _llava_record({**row, "image": images}, sample_id, root, where, source="hf")
    if row.get("messages") is not None:
        return _messages_record({"messages": _with_row_images(row["messages"], images)}, sample_id, root, where)
    if isinstance(row.get("texts"), list):
        turns = [{"from": role, "value": turn.get(key)} for turn in row["texts"] if isinstance(turn, dict)
                 for role, key in (("human", "user"), ("gpt", "assistant"))]
        return _llava_record({"image": images, "conversations": turns}, sample_id, root, where, source="hf")
    if isinstance(row.get("question"), str):
        answers = row.get("answers") if row.get("answers") is not None else row.get("answer")
        answers = [a.get("answer") if isinstance(a, dict) else a for a in _as_list(answers)]
        sample = Sample(sample_id, "vqa", question=row["question"], meta={"source": "hf"},
                        answers=[str(a) for a in answers if a is not None and str(a).strip()])
        return _build(sample, root, images, where)
    caption = row.get("caption", row.get("text"))
    if isinstance(caption, str):
        return _build(Sample(sample_id, "caption", text=caption, meta={"source": "hf"}), root, images, where)
    return Rejected(sample_id, "bad_record", "no conversations, messages, texts, question or caption/text column "
                                             f"(columns: {sorted(row)})", where)


def _with_row_images(messages: Any, images: list[Any]) -> Any:
    """OpenAI messages whose bare `{"type": "image"}` parts (the HF chat format) carry the row's images in order."""
    if not isinstance(messages, list):
        return messages
    remaining = iter(images)
    filled = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = [{**part, "image": next(remaining, None)} if isinstance(part, dict) and part.get("type") ==
                       "image" and part.get("image") is None else part for part in content]
            message = {**message, "content": content}
        filled.append(message)
    return filled


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; check the path")
    return path


def _build(sample: Sample, root: Path, references: list[Any], source: str) -> Item:
    """Attach the images (paths under `root`, data URLs or bytes: see `_image_bytes`) and validate; a
    missing or unreadable image is a `Rejected`. The paths go to `meta["image_paths"]`."""
    for position, reference in enumerate(references):
        image = _image_bytes(reference, root)
        if isinstance(image, str):
            reason, _, detail = image.partition(": ")
            return Rejected(sample.id, reason, detail, source)
        extension, data = image
        sample.images.append(ImageRef(image_name(position, len(references), extension), data))
    paths = [r.get("path") if isinstance(r, dict) else r for r in references]
    paths = [p for p in paths if isinstance(p, str) and not p.startswith("data:")]
    if paths:
        sample.meta["image_paths"] = paths
    return _validated(sample, source)


def _under_root(root: Path, relative: str) -> Path | str:
    """`root / relative` when it stays inside `root`; else "image_outside_root: ..." (an absolute path or a
    `..` in a data file must not read files the data set does not hold)."""
    file = Path(os.path.normpath(root / relative))  # no symlinks followed: a data set may link its images
    if not file.is_relative_to(os.path.normpath(root)):
        return f"image_outside_root: {relative!r} leaves the image root {root}"
    return file


def _validated(sample: Sample, source: str) -> Item:
    try:
        return sample.validate()
    except DataError as error:
        return Rejected(sample.id if isinstance(sample.id, str) else None, "invalid_sample", str(error), source)


def _add_image_tokens(turns: list[dict], images: int) -> None:
    """One `<image>` per image in front of the first human turn, when no turn places them."""
    if images and not any(isinstance(t["value"], str) and IMAGE_TOKEN in t["value"] for t in turns):
        first_human = next((t for t in turns if t["from"] == "human" and isinstance(t["value"], str)), None)
        if first_human is not None:
            first_human["value"] = f"{IMAGE_TOKEN}\n" * images + first_human["value"]


def _load_json(path: Path) -> Any:
    """The parsed JSON object in `path`, or a `Rejected` saying why it cannot be read."""
    try:
        return read_json(path, "JSON file", dict)
    except DataError as error:
        return Rejected(None, "bad_json", str(error), str(path))


def _objects(data: dict, key: str, path: Path) -> Iterator[dict | Rejected]:
    """The entries of the list `data[key]`, each one that is not a JSON object as a `Rejected`."""
    entries = data.get(key, [])
    if not isinstance(entries, list):
        yield Rejected(None, "bad_json", f"'{key}' is not a list", str(path))
        return
    for number, entry in enumerate(entries):
        yield entry if isinstance(entry, dict) else Rejected(
            None, "bad_record", f"{key}[{number}] is not an object", str(path))


def _json_array(path: Path) -> Iterator[tuple[int, dict | Rejected]]:
    try:
        data = read_json(path, "JSON file", list)
    except DataError as error:
        yield 0, Rejected(None, "bad_json", str(error), str(path))
        return
    for number, record in enumerate(data):
        yield number, record if isinstance(record, dict) else Rejected(
            None, "bad_record", f"entry {number} is not an object", str(path))


def _json_lines(path: Path) -> Iterator[tuple[int, dict | Rejected]]:
    for number, record in read_jsonl(path):
        if isinstance(record, DataError):
            yield number, Rejected(None, "bad_json", str(record), str(path))
        else:
            yield number, record if isinstance(record, dict) else Rejected(
                None, "bad_record", f"line {number} is not an object", str(path))


def _caption_records(path: Path) -> Iterator[tuple[int, dict | Rejected]]:
    if path.suffix == ".jsonl":
        yield from _json_lines(path)
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    reader = csv.DictReader(io.StringIO(text), delimiter="\t" if path.suffix == ".tsv" else ",")
    if not {"image", "caption"} <= set(reader.fieldnames or []):
        yield 0, Rejected(None, "bad_header", f"header {reader.fieldnames} lacks 'image' and 'caption'", str(path))
        return
    yield from enumerate(reader, start=2)
