"""The ``cameras`` command: one program, one module per subcommand.

Each subcommand module has ``add_parser(subparsers)`` and ``run(args) -> exit code``;
they parse and print only, and call the library for everything else.
Exit codes: 0 all inputs succeeded, 1 some failed (the rest still written), 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..budget import MemoryBudgetError

# One module per subcommand, in the order ``cameras --help`` lists them.
SUBCOMMANDS = ["explain", "compare", "evaluate", "sanity", "attack", "serve"]


class UsageError(Exception):
    """A bad argument: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="cameras",
        description="Sharp, class-specific saliency maps (CAMERAS, CVPR 2021) for classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"cameras {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UsageError as error:
        print(f"cameras {args.command}: error: {error}", file=sys.stderr)
        return 2
    except MemoryBudgetError as error:  # a request over the memory budget (cameras.budget)
        print(f"cameras {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cameras {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
