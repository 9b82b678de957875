"""Strict reading of benchmark files: any problem is a `DataError` that names the file and the field
(`vlstack.files.read_json` reads the JSON; these check what is in it).

Evaluation never skips a bad record (a skipped question would shrink the denominator
without anyone noticing), so unlike `vlstack.data.sources` these helpers raise.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vlstack.errors import DataError

MISSING_SHOWN = 5
"""How many missing paths or unknown ids an error message lists."""


def existing_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist; pass the path of the official file")
    return path


def existing_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{what} {path} is not a directory; pass the folder that holds the images")
    return path


def records(data: dict, key: str, path: Path) -> list[dict]:
    """`data[key]`, which must be a list of JSON objects."""
    entries = data.get(key)
    if not isinstance(entries, list):
        raise DataError(f"{path}: the top-level object needs a list under {key!r}")
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"{path}: {key}[{number}] is a {type(entry).__name__}, not an object")
    return entries


def field(record: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """`record[key]`, which must exist and be of `kind` (a bool is never an int here)."""
    value = record.get(key)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if value is None or (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise DataError(f"{where}: field {key!r} must be {names}, found {value!r}")
    return value


def text_list(record: dict, key: str, where: str) -> list[str]:
    """`record[key]` as a non-empty list of strings (numbers, which some files hold, become strings)."""
    values = field(record, key, list, where)
    if not values or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
        raise DataError(f"{where}: field {key!r} must be a non-empty list of strings, found {values!r}")
    return [str(v) for v in values]


def check_images(paths: Iterable[Path], what: str) -> None:
    """Every image must exist: a question without its image cannot be answered, only silently dropped."""
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise DataError(f"{len(missing)} {what} images are missing, e.g. {missing[:MISSING_SHOWN]}; "
                        f"check the image folder")
