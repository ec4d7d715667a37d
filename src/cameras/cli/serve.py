"""``cameras serve``: the web page for explaining photos, on loopback by default."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys

from . import SUBCOMMANDS
from .common import add_model_arguments, open_session, usage_error


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help=SUBCOMMANDS["serve"],
        description="Start the web page (Gradio) on http://HOST:PORT. Only this machine can "
        "reach it unless --host says otherwise. Needs the 'web' extra (gradio).",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=20,
        help="largest upload in MB (default: %(default)s)",
    )
    parser.add_argument(
        "--max-side", type=int, default=8000, help="largest photo side in pixels (default: 8000)"
    )
    add_model_arguments(parser)
    parser.set_defaults(run=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    """Fail in a second, not after loading the model, when the port is taken."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As the server itself does: a recently closed server's port is still usable,
            # while a port that another program listens on is refused.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        reason = error.strerror or str(error)
        raise usage_error(f"--port {port}: cannot listen on {host} ({reason})") from None


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise usage_error(f"--port {args.port}: must be between 1 and 65535")
    if not 0 < args.max_upload_mb < float("inf"):
        raise usage_error(f"--max-upload-mb {args.max_upload_mb}: must be positive")
    if args.max_side < 1:
        raise usage_error(f"--max-side {args.max_side}: must be positive")
    # Before Gradio is imported: analytics also switch on a version check over the network.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio  # noqa: F401  (checked here so a missing extra is one clear line)

        from .. import web
    except ModuleNotFoundError as error:
        raise usage_error(f"the web page needs {error.name}: pip install 'cameras[web]'") from None
    _check_port(args.host, args.port)
    session = open_session(args)  # a bad --layer is a usage error here, before serving
    app = web.build_app(
        session,
        max_bytes=int(args.max_upload_mb * web.MEGABYTE),
        max_side=args.max_side,
        model_name=args.model,
    )
    if not _is_loopback(args.host):
        print(f"warning: --host {args.host} lets other machines reach this page", file=sys.stderr)
    print(f"cameras serve: http://{args.host}:{args.port}/ (Ctrl-C stops it)", file=sys.stderr)
    try:
        web.serve(app, args.host, args.port, block=True)
    except OSError as error:  # taken between the check above and now
        reason = str(error).split(". ")[0]
        raise usage_error(f"--port {args.port}: cannot listen on {args.host} ({reason})") from None
    except KeyboardInterrupt:
        pass  # Ctrl-C is the normal way to stop a server
    finally:
        app.close()
    return 0
