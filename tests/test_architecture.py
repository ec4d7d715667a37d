"""The folder rule of docs/architecture.md, read from the imports of every module.

Each module belongs to a layer (its folder under ``cameras/``, or its own name for a
top-level module); a layer may import only the layers listed for it. Imports inside
functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cameras

PACKAGE = Path(cameras.__file__).parent

# layer -> the layers it may import (itself always allowed). Keep in step with
# docs/architecture.md.
LIBRARY = {"core", "backends", "keras", "methods", "models", "session", "apps", "run"}
ALLOWED = {
    "core": set(),
    "targets": {"core"},
    # The Keras backend reaches its TensorFlow code in cameras.keras (imported when used).
    "backends": {"core", "keras"},
    "keras": {"core", "backends", "methods", "models", "session"},
    "methods": {"core", "backends"},
    "models": {"core", "backends", "keras"},
    "session": {"core", "backends", "methods", "models"},
    "apps": {"core", "backends", "methods", "models", "session"},
    "run": {"core", "backends", "methods", "models", "session", "apps"},
    # The faces: they parse, call a session and show what comes back.
    "web": LIBRARY | {"__init__"},
    "cli": LIBRARY | {"__init__", "web"},
    # The package itself only names public things, lazily.
    "__init__": {"core", "methods", "models", "session", "apps"},
    "__main__": {"cli"},
}
FACES = {"cli", "web"}


def layer_of(module: str) -> str:
    """cameras.core.capture -> 'core'; cameras.session -> 'session'; cameras -> '__init__'."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1].startswith("__") and parts[1] != "__main__":
        return "__init__"  # the package itself, or a name it holds (``__version__``)
    return parts[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) for every import of a cameras module in the file (or in
    ``text``, read as if it were that file)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if text is None else text)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "cameras"]


def string_imports(path: Path) -> list[tuple[int, str]]:
    """Relative module names given to importlib as string constants (``".core.classes"``),
    as the package's lazy names and the CLI's subcommand table do."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if text.startswith(".") and text[1:2].isalpha() and " " not in text:
                target = f"{package}{text}"
                relative = Path(*target.split(".")[1:])
                if (PACKAGE / relative).is_dir() or (PACKAGE / relative).with_suffix(
                    ".py"
                ).is_file():
                    found.append((node.lineno, target))  # a module, not a file suffix
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_known_layer():
    unknown = {layer_of(module_name(p)) for p in SOURCES} - set(ALLOWED)
    assert not unknown, f"modules outside the layers of docs/architecture.md: {unknown}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_folder_rule(path):
    here = layer_of(module_name(path))
    broken = []
    for line, target in imported_modules(path) + string_imports(path):
        there = layer_of(target)
        if there != here and there not in ALLOWED[here]:
            broken.append(f"{path.name}:{line} ({here}) imports {target} ({there})")
    assert not broken, "; ".join(broken)


def test_no_library_module_imports_a_face():
    for path in SOURCES:
        here = layer_of(module_name(path))
        if here in FACES or here == "__main__":
            continue
        faces = [t for _, t in imported_modules(path) if layer_of(t) in FACES]
        assert not faces, f"{path}: the library imports a face: {faces}"


def test_the_rule_catches_a_broken_import():
    """The checker itself: a core module that imports an application is reported."""
    imports = imported_modules(PACKAGE / "core" / "probe.py", "from ..apps import attack\n")
    assert imports == [(1, "cameras.apps")]
    assert layer_of(imports[0][1]) not in ALLOWED["core"]
