"""The ``cameras`` command: one program, one module per subcommand.

Each subcommand module has ``add_parser(subparsers)`` and ``run(args) -> exit code``;
they parse and print only, and call the library for everything else.
Exit codes: 0 all inputs succeeded, 1 some failed (the rest still written), 2 usage error
(a bad option, an --out that cannot be written, annotations with nothing to evaluate),
130 interrupted (Ctrl-C), 143 stopped by SIGTERM, 129 by SIGHUP (128 + the signal's number,
as a shell reports it). SIGTERM and SIGHUP stop a subcommand as Ctrl-C does: its worker
processes, render process and Ray processes are stopped before it exits. Every failure
is one line on stderr naming the file or option.

A face: it may import the whole library and the web page; nothing in the library imports
it (docs/architecture.md). ``cameras --help`` imports no subcommand and no torch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
import warnings
from collections.abc import Iterable, Sequence

# One module per subcommand, in the order ``cameras --help`` lists them, with the line
# that list shows. A run imports only its own subcommand's module (which imports torch);
# ``cameras --help`` and ``--version`` import none of them.
SUBCOMMANDS = {
    "explain": "write a saliency map and overlay for each image",
    "compare": "one figure comparing methods, classes or models on an image",
    "evaluate": "score saliency methods on images with bounding boxes",
    "sanity": "model-parameter randomisation test of saliency methods",
    "attack": "saliency-focused PGD towards the least-likely class, against plain PGD",
    "serve": "start a web page: drop a photo, see its top-5 classes and saliency maps",
}


class UsageError(Exception):
    """A bad argument: printed as one line, exit code 2."""


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, as Ctrl-C's KeyboardInterrupt is:
    everything that cleans up after Ctrl-C (workers, the render process, Ray) runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# The signals a job scheduler, ``timeout`` or a closed terminal sends to stop a program.
STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s)


@contextlib.contextmanager
def stop_signals_as_interrupts():
    """Within the block, SIGTERM / SIGHUP raise ``Stopped``; the handlers before are put
    back after (only the main thread can handle signals: elsewhere this does nothing).
    Yields the list of signals received: a library that catches the interrupt and raises
    a plain KeyboardInterrupt of its own (Ray's ``get`` does) loses which signal it was."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def stop(signum, frame) -> None:
        received.append(signum)
        raise Stopped(signum)

    before = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield received
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def build_parser(only: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``only``, the subcommands not named in it are listed by
    name and summary alone, without importing their modules."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="cameras",
        description="Sharp, class-specific saliency maps (CAMERAS, CVPR 2021) for classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"cameras {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary in SUBCOMMANDS.items():
        if only is None or name in only:
            importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=summary, add_help=False)
    return parser


def chosen_subcommand(argv: Sequence[str]) -> list[str]:
    """The subcommand ``argv`` runs (its first word that names one), as a list of at most
    one name: the only module ``build_parser`` then needs to import."""
    return [word for word in argv if word in SUBCOMMANDS][:1]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(only=chosen_subcommand(argv)).parse_args(argv)
    from ..core.budget import MemoryBudgetError  # the subcommand's module has loaded torch

    received: list[int] = []
    try:
        check_environment()
        with warnings_as_lines(), stop_signals_as_interrupts() as received:
            return args.run(args)
    except UsageError as error:
        from ..core.images import shown

        print(shown(f"cameras {args.command}: error: {error}"), file=sys.stderr)
        return 2
    except MemoryBudgetError as error:  # a request over the memory budget (cameras.core.budget)
        print(f"cameras {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # A file that could not be written or read outside the per-input loops (a summary,
        # a table): one line naming it, not a traceback.
        reason = error.strerror or str(error)
        where = f"{error.filename}: " if error.filename else ""
        print(f"cameras {args.command}: error: {where}{reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:
        if isinstance(stop, Stopped) or received:
            signum = stop.signum if isinstance(stop, Stopped) else received[0]
            print(f"cameras {args.command}: stopped by {Stopped(signum)}", file=sys.stderr)
            return 128 + signum
        print(f"cameras {args.command}: interrupted", file=sys.stderr)
        return 130


def check_environment() -> None:
    """A bad ``CAMERAS_MEMORY_GB`` is a usage error before any work (not a traceback once
    the model has loaded)."""
    from ..core.budget import budget_bytes

    try:
        budget_bytes()
    except ValueError as error:
        raise UsageError(str(error)) from None


@contextlib.contextmanager
def warnings_as_lines():
    """Print each warning as one line of its own (through ``tqdm.write``, which lifts a
    progress bar out of the way) instead of Python's two-line form, which would run
    into a bar drawn on the same terminal line."""
    from .common import note

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        note(f"warning: {category.__name__}: {message}".replace("\n", " "), error=True)

    original = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


if __name__ == "__main__":
    sys.exit(main())
