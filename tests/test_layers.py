"""The import rules of docs/ARCHITECTURE.md: every module imports only its own layer or lower ones (imports
inside functions included), so the house has no upward arrow and no cycle between layers; `synthetic/` and
`demo/` are leaves that only the layers above them (and the CLI) import."""

from __future__ import annotations

import ast
from pathlib import Path

import vlstack

PACKAGE = Path(vlstack.__file__).parent
LAYERS = [
    {"vlstack", "vlstack.errors", "vlstack.progress", "vlstack.config"},
    {"vlstack.models"},
    {"vlstack.checkpoint"},
    {"vlstack.data"},
    {"vlstack.infer"},
    {"vlstack.eval"},
    {"vlstack.train"},
    {"vlstack.align"},
    {"vlstack.apps"},
    {"vlstack.synthetic"},
    {"vlstack.demo"},
    {"vlstack.cli"},
]
"""From the ground up; a layer is a top-level module or package of vlstack."""


def layer_of(module: str) -> int:
    parts = module.split(".")
    for depth in (2, 1):
        name = ".".join(parts[:depth])
        for index, layer in enumerate(LAYERS):
            if name in layer:
                return index
    raise AssertionError(f"{module} is in no layer of LAYERS; add its package to the map")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def vlstack_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `import vlstack...` / `from vlstack... import` in a file, at any depth."""
    imports = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        imports += [(node.lineno, name) for name in names if name == "vlstack" or name.startswith("vlstack.")]
    return imports


def test_every_module_imports_only_its_own_layer_or_lower():
    upward = []
    for module, path in modules().items():
        for line, imported in vlstack_imports(path):
            if imported == "vlstack" and module != "vlstack":
                continue  # `import vlstack` for __version__ only
            if layer_of(imported) > layer_of(module):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} imports {imported}")
    assert upward == [], "imports that run up the layers:\n" + "\n".join(upward)


def test_synthetic_and_demo_are_leaves():
    for module, path in modules().items():
        for line, imported in vlstack_imports(path):
            if imported.startswith("vlstack.synthetic"):
                assert module.startswith(("vlstack.synthetic", "vlstack.demo", "vlstack.cli")), f"{path}:{line}"
            if imported.startswith("vlstack.demo"):
                assert module.startswith(("vlstack.demo", "vlstack.cli")), f"{path}:{line}"


def test_every_package_is_on_the_map():
    for module in modules():
        layer_of(module)
