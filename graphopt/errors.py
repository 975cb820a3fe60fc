"""graphopt's one error type, and its classes.

Every failure a user can cause or meet is a :class:`GraphoptError`: it says what
went wrong, where (file, pass, node, plugin) and a hint, and it carries the exit
code of its class. The CLI renders it in one paragraph; a traceback is shown only
with ``--debug``. Core code raises these and never prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, one per class of failure (documented in docs/guide/cli.md)."""

    OK = 0
    INTERNAL = 1  # a bug in graphopt or TensorFlow: please report it
    USAGE = 2  # bad flags, bad transform string, unknown pass
    INPUT = 3  # the model (or another input file) cannot be read or is not what was asked
    PASS = 4  # a pass or plugin failed, or produced an invalid graph
    VERIFY = 5  # the optimized model does not match the original within tolerance
    OUTPUT = 6  # the output cannot be written
    UNSAFE = 7  # the graph holds ops that reach outside the process and was not allowed
    RESOURCE = 8  # running the model's graph ran out of a sandbox limit (memory, time) or crashed its process


@dataclass
class GraphoptError(Exception):
    """An error that renders itself: what happened, where, and what to try.

    ``where`` is a short locator such as ``"model.pb"``, ``"pass fold_constants"``
    or ``"node conv1/BiasAdd"``; several can be joined with ``", "``.
    """

    message: str
    where: str | None = None
    hint: str | None = None
    code: ExitCode = ExitCode.INTERNAL
    details: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.render()

    def render(self) -> str:
        """The one-paragraph text the CLI prints (plain text, no markup)."""
        lines = [self.message if not self.where else f"{self.message} ({self.where})"]
        lines.extend(f"  {d}" for d in self.details)
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "error": type(self).__name__,
            "code": int(self.code),
            "message": self.message,
            "where": self.where,
            "hint": self.hint,
            "details": list(self.details),
        }


# Each class differs from the base only by its default exit code. They are written out (not made by
# a factory) so type checkers and readers see them; the dataclass decorator keeps every class
# constructible with the same keywords as the base.


@dataclass
class UsageError(GraphoptError):
    """Bad command line, transform string, option or pass name."""

    code: ExitCode = ExitCode.USAGE


@dataclass
class InputError(GraphoptError):
    """A model or other input cannot be read, or is not what was asked for."""

    code: ExitCode = ExitCode.INPUT


@dataclass
class PassError(GraphoptError):
    """A pass or plugin failed, or returned a graph TensorFlow cannot import."""

    code: ExitCode = ExitCode.PASS


@dataclass
class VerificationError(GraphoptError):
    """Outputs differ from the original beyond tolerance."""

    code: ExitCode = ExitCode.VERIFY


@dataclass
class OutputError(GraphoptError):
    """The output cannot be written."""

    code: ExitCode = ExitCode.OUTPUT


@dataclass
class UnsafeGraphError(GraphoptError):
    """The graph holds ops that are not known to compute only, and they were not allowed."""

    code: ExitCode = ExitCode.UNSAFE


@dataclass
class ResourceError(GraphoptError):
    """Running a model's graph in its sandbox ran out of a limit, or the sandboxed process crashed.

    ``limit`` names what ran out: ``"memory"``, ``"cpu"`` (CPU time), ``"time"`` (wall clock),
    ``"file size"``, ``"filesystem"`` (a write outside the sandbox's folder was refused) or
    ``"crash"`` (the process died of a signal, named in the message, or exited without answering).
    See :mod:`graphopt.security.sandbox`.
    """

    code: ExitCode = ExitCode.RESOURCE
    limit: str = ""

    def to_dict(self) -> dict:
        return {**super().to_dict(), "limit": self.limit}


@dataclass
class PluginError(GraphoptError):
    """A plugin failed to load or its hook raised."""

    code: ExitCode = ExitCode.PASS
