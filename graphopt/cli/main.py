"""``graphopt``: global flags, the command table from the plugin registry, and error rendering.

Commands (built-in and from plugins) are registered through the
``register_commands`` hook. Any :class:`GraphoptError` is printed as one
paragraph on stderr and turned into its class's exit code; anything else is an
internal error. Tracebacks appear only with ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape

from graphopt import __version__
from graphopt.errors import ExitCode, GraphoptError
from graphopt.plugins import Host, set_default_host


@dataclass
class CliContext:
    """What a command's ``run`` gets besides its arguments."""

    console: Console  # stdout: results
    err: Console  # stderr: progress, warnings, errors
    host: Host
    debug: bool = False


# Commands that never touch TensorFlow: importing it (seconds) just to silence it would be waste.
_LIGHT_COMMANDS = {"passes", "plugins", None}


def _quiet_tensorflow() -> None:
    # TensorFlow's C++ logging would otherwise bury graphopt's output; --debug keeps it.
    # Level 3: TF's own errors reach the user as Python exceptions graphopt renders.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_CPP_MAX_VLOG_LEVEL", "-1")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


def _import_tensorflow_silently() -> None:
    """Import TensorFlow with stderr closed at the file-descriptor level.

    TF's native libraries log at load time (oneDNN, CUDA stubs) before absl's
    logging is initialised, so no log level reaches those lines; only the
    descriptor can. An import failure still raises, and is rendered as usual.
    """
    if "tensorflow" in sys.modules:
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor (embedded use): import normally
        import tensorflow  # noqa: F401
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _global_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", help="show tracebacks and TensorFlow's own logs")
    p.add_argument("--no-plugins", action="store_true", help="load no third-party plugins (also GRAPHOPT_NO_PLUGINS=1)")
    p.add_argument("--plugins", metavar="A,B", help="load only these plugins (also GRAPHOPT_PLUGINS=a,b)")
    return p


def build_parser(host: Host) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphopt", parents=[_global_parser()],
        description="Optimize TensorFlow models for TensorFlow Serving: GTT transforms, Python passes and plugins.")
    parser.add_argument("--version", action="version", version=f"graphopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, info in sorted(host.registry.commands.items()):
        origin = "" if info.origin.kind != "plugin" else f" [{info.origin}]"
        p = sub.add_parser(name, help=info.help + origin, description=info.help)
        info.configure(p)
        p.set_defaults(_run=info.run)
    return parser


def _render_error(err: Console, error: GraphoptError) -> None:
    text = error.render().split("\n")
    # escaped: messages quote TF errors, paths and node names, where "[/x]" would be read as markup (and raise)
    err.print(f"[bold red]error:[/] {escape(text[0])}", highlight=False, markup=True, soft_wrap=True)
    for line in text[1:]:
        style = "yellow" if line.startswith("hint:") else "dim"
        err.print(line, style=style, highlight=False, markup=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre, _ = _global_parser().parse_known_args(argv)
    err = Console(stderr=True)
    if not pre.debug:
        _quiet_tensorflow()
    try:
        allow = [a for a in pre.plugins.split(",")] if pre.plugins else None
        host = Host.create(plugins=False if pre.no_plugins else None, allow=allow)
    except GraphoptError as exc:
        _render_error(err, exc)
        return int(exc.code)
    set_default_host(host)
    ctx = CliContext(console=Console(), err=err, host=host, debug=pre.debug)
    for failure in host.registry.failures:
        warning = failure.to_error()
        err.print(f"[yellow]warning:[/] {escape(warning.message)} ({escape(warning.where or '')})", highlight=False,
                  soft_wrap=True)  # escaped: a plugin's error text may hold [brackets] rich reads as markup
        if pre.debug and failure.trace:
            err.print(failure.trace, highlight=False, markup=False, soft_wrap=True, end="")
    parser = build_parser(host)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return int(ExitCode.USAGE)
    try:
        if not pre.debug and args.command not in _LIGHT_COMMANDS:
            _import_tensorflow_silently()
        code = args._run(args, ctx)
        return int(code or 0)
    except GraphoptError as exc:
        if pre.debug:
            err.print_exception()
        _render_error(err, exc)
        return int(exc.code)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]")
        return 130
    except Exception as exc:  # a bug: say so plainly, traceback only with --debug
        if pre.debug:
            err.print_exception()
        info = host.registry.commands.get(args.command)
        plugin = info.origin if info is not None and info.origin.kind == "plugin" else None
        where = f"command {args.command}" + (f", plugin {plugin}" if plugin else "")
        report = f"report it to the authors of {plugin}" if plugin else "report it"
        _render_error(err, GraphoptError(f"internal error: {type(exc).__name__}: {exc}", where=where,
                                         code=ExitCode.INTERNAL,
                                         hint=f"rerun with --debug for the traceback and {report}"))
        return int(ExitCode.INTERNAL)


def run_cli(*argv: Any) -> int:
    """Call the CLI in-process (tests, notebooks)."""
    return main([str(a) for a in argv])
