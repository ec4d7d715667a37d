"""Methods are built in one place: ``cameras.methods.build_method`` (issue 20).

The library's source is read, not run: no ``METHODS[name](...)`` call and no call of a
method class (any subclass of ``SaliencyMethod``) outside ``build_method``, and
``build_method`` itself is called only by ``Session`` and by the ``cameras.keras``
names. Every entry point (the CLI, the web page, evaluation, sanity, the attack, the
Ray actors) therefore gets its methods from a ``Session``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cameras
from cameras.methods import SaliencyMethod

SOURCE = Path(cameras.__file__).parent
BUILDER = ("methods/__init__.py", "build_method")
# Who may call the builder: the session, and the Keras names (cameras.keras.CAMERAS...).
BUILDER_CALLERS = {"session.py", "keras/methods.py"}


def method_class_names() -> set[str]:
    names, todo = set(), [SaliencyMethod]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


def called_name(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def constructions(tree: ast.AST, classes: set[str]) -> list[tuple[str, int, str]]:
    """(enclosing function, line, what) for each method construction and builder call."""
    found = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        if isinstance(node, ast.Call):
            name = called_name(node)
            subscript = node.func
            if isinstance(subscript, ast.Subscript):
                target = subscript.value
                target_name = getattr(target, "id", getattr(target, "attr", ""))
                if target_name == "METHODS":
                    found.append((function, node.lineno, "METHODS[...](...)"))
            elif name in classes:
                found.append((function, node.lineno, f"{name}(...)"))
            elif name == "build_method":
                found.append((function, node.lineno, "build_method(...)"))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, "<module>")
    return found


def test_the_detector_finds_each_kind_of_construction():
    snippet = (
        "def explain(model):\n"
        "    a = METHODS['cameras'](model)\n"
        "    b = cameras.GradCAM(model, layer='x')\n"
        "    return build_method('cameras', model)\n"
    )
    found = constructions(ast.parse(snippet), method_class_names())
    assert [what for _, _, what in found] == [
        "METHODS[...](...)",
        "GradCAM(...)",
        "build_method(...)",
    ]


def test_methods_are_constructed_only_in_build_method():
    classes = method_class_names()
    assert {"CAMERAS", "GradCAM", "LayerCAM"} <= classes
    outside, builder_calls = [], set()
    for path in sorted(SOURCE.rglob("*.py")):
        relative = path.relative_to(SOURCE).as_posix()
        for function, line, what in constructions(ast.parse(path.read_text()), classes):
            if what == "build_method(...)":
                builder_calls.add(relative)
                if relative not in BUILDER_CALLERS:
                    outside.append(f"{relative}:{line} {function}: {what}")
            elif (relative, function) != BUILDER:
                outside.append(f"{relative}:{line} {function}: {what}")
    assert outside == [], "methods built outside build_method:\n" + "\n".join(outside)
    assert builder_calls == BUILDER_CALLERS


def test_method_options_reach_every_subcommand_with_one_help_text():
    """--layer, --scales, --rule and --preprocess: on every subcommand that runs a method,
    from the one helper (so one help text each); --rule's help says what the default does."""
    import argparse

    from cameras.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    helps: dict[str, set[str]] = {}
    for name in ("explain", "compare", "evaluate", "sanity", "attack", "serve"):
        options = {o: a.help for a in commands[name]._actions for o in a.option_strings}
        for option in ("--layer", "--scales", "--rule", "--preprocess"):
            assert option in options, f"{name} has no {option}"
            helps.setdefault(option, set()).add(options[option])
    assert all(len(texts) == 1 for texts in helps.values()), helps
    (rule,) = helps["--rule"]
    assert "default: all, every scale counts, with or without a class" in rule
