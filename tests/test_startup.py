"""Start-up: ``import cameras`` loads no torch; every public name still resolves."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return set(result.stdout.split())


def test_import_cameras_loads_no_torch():
    loaded = _modules_after("import cameras")
    assert "cameras" in loaded
    assert not {"torch", "numpy", "PIL", "matplotlib"} & loaded


def test_public_names_resolve_to_their_modules():
    import cameras
    from cameras.methods import CAMERAS
    from cameras.session import Session

    assert cameras.CAMERAS is CAMERAS
    assert cameras.Session is Session
    for name in cameras.__all__:
        assert getattr(cameras, name) is not None
    assert set(cameras.__all__) <= set(dir(cameras))


def test_unknown_name_is_an_attribute_error():
    import cameras

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cameras.nope  # noqa: B018


def test_submodules_are_reachable_as_attributes():
    code = "import cameras; print(cameras.session.SessionSpec.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "SessionSpec", result.stderr


def _modules_after_main(argv: list[str]) -> set[str]:
    code = f"from cameras.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    return _modules_after(code)


@pytest.mark.parametrize("argv", [["--help"], ["--version"], []])
def test_top_level_help_and_version_load_no_torch_and_no_subcommand(argv):
    loaded = _modules_after_main(argv)
    assert "cameras.cli" in loaded
    assert "torch" not in loaded
    assert not {f"cameras.cli.{name}" for name in SUBCOMMAND_NAMES} & loaded


def test_a_subcommand_imports_only_its_own_module():
    loaded = _modules_after_main(["explain", "--help"])
    assert "cameras.cli.explain" in loaded
    others = {f"cameras.cli.{name}" for name in SUBCOMMAND_NAMES if name != "explain"}
    assert not others & loaded
    assert not {"cameras.apps.attack", "cameras.apps.evaluation", "gradio", "ray"} & loaded


def test_top_level_help_lists_every_subcommand_with_its_own_summary(capsys):
    from cameras.cli import SUBCOMMANDS, build_parser, main

    with pytest.raises(SystemExit):
        main(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    full = build_parser()  # every module imported: their parsers carry the same lines
    choices = full._subparsers._group_actions[0]._choices_actions
    assert {a.dest: a.help for a in choices} == SUBCOMMANDS
    for name, summary in SUBCOMMANDS.items():
        assert f"{name} {summary}" in shown


SUBCOMMAND_NAMES = ["explain", "compare", "evaluate", "sanity", "attack", "serve"]
