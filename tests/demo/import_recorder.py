"""Run the `vlstack` command with a recorder of the top-level packages vlstack's own code imports.

    python tests/demo/import_recorder.py RECORD.json demo --quick ...

writes the sorted names to RECORD.json when the command ends, so a test can check that each one is
in the standard library or installed by vlstack's base dependencies (what `pip install -e .` gives).
Only imports made from a `vlstack` module count: what a dependency imports is its own business.
"""

from __future__ import annotations

import importlib.abc
import json
import sys

IMPORTED: set[str] = set()


class Recorder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if "." not in name:
            frame = sys._getframe(1)
            while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen")):
                frame = frame.f_back
            if frame is not None and frame.f_globals.get("__name__", "").startswith("vlstack"):
                IMPORTED.add(name)
        return None  # the other finders do the importing


if __name__ == "__main__":
    record, argv = sys.argv[1], sys.argv[2:]
    sys.meta_path.insert(0, Recorder())
    from vlstack.cli import main

    try:
        code = main(argv)
    finally:
        with open(record, "w", encoding="utf-8") as f:
            json.dump(sorted(IMPORTED), f)
    sys.exit(code)
