"""``graphopt``: global flags, the command table from the plugin registry, and error rendering.

Commands (built-in and from plugins) are registered through the
``graphopt_register_commands`` hook. Any :class:`GraphoptError` is printed as one
paragraph on stderr and turned into its class's exit code; anything else is an
internal error. Tracebacks appear only with ``--debug``.

Everything printed goes through consoles that escape control characters (names
from a model can hold ANSI escapes), and SIGTERM/SIGHUP unwind like Ctrl-C, so
the ``finally`` blocks of the writers remove their temporaries: exit 130 for
SIGINT, 128 + the signal's number for the others (143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape

from graphopt import __version__
from graphopt.cli.render import install_escaping, printable
from graphopt.errors import ExitCode, GraphoptError
from graphopt.plugins import Host, set_default_host


@dataclass
class CliContext:
    """What a command's ``run`` gets besides its arguments."""

    console: Console  # stdout: results
    err: Console  # stderr: progress, warnings, errors
    host: Host
    debug: bool = False
    # The plugin selection the host was made with (--no-plugins, --plugins): a confined run's child makes its own.
    plugins: bool | None = None
    allow_plugins: list[str] | None = None


# Commands that never touch TensorFlow: importing it (seconds) just to silence it would be waste.
_LIGHT_COMMANDS = {"passes", "plugins", None}
# Commands that run whole in one confined child when the sandbox is on (graphopt.confined_run): this process
# never imports TensorFlow for them.
_CONFINED_COMMANDS = {"optimize"}
# Commands whose loads (graphopt.loaders.load, confined) and runs of a model's graph share one sandboxed child,
# started when first needed. Not serve (a child idling for the server's lifetime) nor tune/fleet (workers).
_SHARED_CHILD_COMMANDS = {"inspect", "diff", "explain", "bench", "predict"}


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


def _loads_in_a_child(argv: list[str]) -> bool:
    """Whether the command line names a model that is loaded in a sandboxed child: an existing path (or a Hub
    handle) that is not a GraphDef file, which is only parsed (graphopt.loaders.load)."""
    for arg in argv:
        if arg.startswith("-"):
            continue
        if "://" in arg or (os.path.exists(arg) and not arg.lower().endswith((".pb", ".pbtxt", ".graphdef", ".npz"))):
            return True
    return False


def _global_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", help="show tracebacks and TensorFlow's own logs")
    p.add_argument("--no-plugins", action="store_true", help="load no third-party plugins (also GRAPHOPT_NO_PLUGINS=1)")
    p.add_argument("--plugins", metavar="A,B", help="load only these plugins (also GRAPHOPT_PLUGINS=a,b)")
    # Limits of the sandboxed child processes a model's graph runs in (docs/guide/confinement.md).
    p.add_argument("--memory-limit", metavar="SIZE", help="address space of each process running a model's graph "
                   "(e.g. 16G; default max(8G, 4x the model); also GRAPHOPT_MEMORY_LIMIT)")
    p.add_argument("--cpu-limit", metavar="SECONDS", help="CPU time per run of a model's graph (default 1200; "
                   "also GRAPHOPT_CPU_LIMIT)")
    p.add_argument("--time-limit", metavar="SECONDS", help="wall-clock time per run of a model's graph "
                   "(default 600; also GRAPHOPT_TIME_LIMIT)")
    return p


def _configure_sandbox(pre: argparse.Namespace) -> None:
    from graphopt.security import sandbox

    sandbox.reset_configuration()  # one CLI run's flags must not outlive it (tests call main() repeatedly)
    given: dict[str, Any] = {}  # only the flags given; 0 means no limit
    if pre.memory_limit is not None:
        given["memory_bytes"] = sandbox.parse_bytes(pre.memory_limit, where="--memory-limit")
    if pre.cpu_limit is not None:
        given["cpu_seconds"] = sandbox.parse_seconds(pre.cpu_limit, where="--cpu-limit")
    if pre.time_limit is not None:
        given["wall_seconds"] = sandbox.parse_seconds(pre.time_limit, where="--time-limit")
    sandbox.configure(**given)


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


def _printable_error(error: GraphoptError) -> GraphoptError:
    """``error`` with its text escaped: messages quote node names, signature keys, op names and paths from
    the model, which may hold ANSI escapes or other control characters. Line breaks stay in the message
    and details (TF's errors span lines); ``where`` and ``hint`` are one line each."""
    fields: dict[str, Any] = {
        "message": printable(error.message, newlines=True),
        "where": None if error.where is None else printable(error.where),
        "hint": None if error.hint is None else printable(error.hint),
        "details": [printable(d, newlines=True) for d in error.details],
    }
    try:
        return dataclasses.replace(error, **fields)
    except (TypeError, ValueError):  # a subclass with a constructor of its own: render as the base class
        return GraphoptError(code=error.code, **fields)  # type: ignore[arg-type]


def _render_error(err: Console, error: GraphoptError) -> None:
    shown = _printable_error(error)
    text = shown.render().split("\n")
    # escaped: messages quote TF errors, paths and node names, where "[/x]" would be read as markup (and raise)
    err.print(f"[bold red]error:[/] {escape(text[0])}", highlight=False, markup=True, soft_wrap=True)
    for i, line in enumerate(text[1:], 1):
        style = "yellow" if shown.hint and i == len(text) - 1 else "dim"  # the hint is the last line, always
        err.print(line, style=style, highlight=False, markup=False, soft_wrap=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread so the run unwinds (and cleans up) as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_terminated(signum: int, _frame: object) -> None:
    # Once: a second signal must not cut short the cleanup the first one started (SIGKILL still works).
    signal.signal(signum, signal.SIG_IGN)
    raise Terminated(signum)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into :class:`Terminated` while the CLI runs (main thread, default handlers only:
    an application embedding the CLI keeps its own)."""
    installed: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
                installed[sig] = signal.signal(sig, _raise_terminated)
    try:
        yield
    finally:
        for sig, previous in installed.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    err = Console(stderr=True)
    install_escaping([err])
    try:
        with _terminate_as_interrupt():
            return _main(argv, err)
    except Terminated as exc:
        name = signal.Signals(exc.signum).name
        err.print(f"[red]terminated[/] ({name}): temporary files were removed", highlight=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]: temporary files were removed", highlight=False)
        return 130


def _main(argv: list[str] | None, err: Console) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre, _ = _global_parser().parse_known_args(argv)
    if not pre.debug:
        _quiet_tensorflow()
    try:
        _configure_sandbox(pre)
        allow = [a for a in pre.plugins.split(",")] if pre.plugins else None
        host = Host.create(plugins=False if pre.no_plugins else None, allow=allow)
    except GraphoptError as exc:
        _render_error(err, exc)
        return int(exc.code)
    set_default_host(host)
    out = Console()
    install_escaping([out])  # every command's output, plugins' included: control characters escaped
    ctx = CliContext(console=out, err=err, host=host, debug=pre.debug,
                     plugins=False if pre.no_plugins else None, allow_plugins=allow)
    for failure in host.registry.failures:
        warning = failure.to_error()
        err.print(f"[yellow]warning:[/] {escape(printable(warning.message))} ({escape(printable(warning.where or ''))})",
                  highlight=False,
                  soft_wrap=True)  # escaped: a plugin's error text may hold [brackets] rich reads as markup
        if pre.debug and failure.trace:
            err.print(failure.trace, highlight=False, markup=False, soft_wrap=True, end="")
    parser = build_parser(host)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return int(ExitCode.USAGE)
    try:
        from graphopt.security.sandbox import default_limits

        confined_run = args.command in _CONFINED_COMMANDS and default_limits().confined
        if not pre.debug and args.command not in _LIGHT_COMMANDS and not confined_run:
            _import_tensorflow_silently()
        run = args._run
        if args.command in _SHARED_CHILD_COMMANDS:
            from graphopt.security.sandbox import prestart, with_shared_sandbox

            if _loads_in_a_child(argv):  # its TensorFlow import overlaps this process's
                prestart()
            run = with_shared_sandbox(run, start=False)
        code = run(args, ctx)
        return int(code or 0)
    except GraphoptError as exc:
        if pre.debug:
            err.print_exception()
        _render_error(err, exc)
        return int(exc.code)
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
