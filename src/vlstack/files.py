"""File helpers every layer shares: JSON and JSON lines written atomically, and read strictly.

A reader that must account for every record (`vlstack.data.sources`) turns the `DataError`
these raise into a rejection with a reason; one that must not skip any (the benchmarks) lets
it stop the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vlstack.errors import ConfigError, DataError


def write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """`data` as UTF-8 JSON at `path`, written to a temporary file first and renamed over it, so a reader
    (or a run killed mid-write) never sees half a file."""
    return _write_atomically(Path(path), json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    """One JSON object per line, written atomically."""
    return _write_atomically(Path(path), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_json(path: str | Path, what: str = "file", top: type | None = None) -> Any:
    """The JSON in `path` (which must exist, parse, and be a `top` if given); a DataError names the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist; pass the path of an existing file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{what} {path} is not valid JSON: {error}") from None
    if top is not None and not isinstance(data, top):
        raise DataError(f"{what} {path} must hold a JSON {top.__name__}, found {type(data).__name__}")
    return data


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line; for a line that does not parse, the value is a
    DataError naming it: a strict caller raises it, one that accounts for every record rejects that one."""
    with Path(path).open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    yield number, DataError(f"{path}: line {number} is not valid JSON: {error}")


def rerun_output_dir(out: str | Path, marker: str, outputs: Iterable[str], what: str) -> Path:
    """Create the output folder `out`, or clear an earlier run's outputs (glob patterns) there: a folder
    holding `marker` is one that `what` wrote. Any other non-empty folder is refused, so a mistyped path
    never deletes a user's files."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / marker).is_file():
            raise ConfigError(f"output directory {out} is not empty and holds no earlier {what} ({marker}); "
                              "choose an empty or new directory")
        for pattern in outputs:
            for path in out.glob(pattern):
                path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_atomically(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
