"""The allowlist of ops known to compute only, and what the user allowed on top of it.

The list itself lives in one data file, ``allowed_ops.toml`` beside this module:
every op TensorFlow registers was sorted into a group with the reason it is
safe (``[allowed.*]``), safe only while a loader restores the model
(``[load_only.*]``), or refused with a reason (``[refused.*]``). An op in no
group is refused as "not on the allowlist". :func:`audit` lists the registered
ops the file does not classify (``python -m graphopt.security.allowlist``).

What the user allows on top, per op: ``--allow-op NAME`` (a command's explicit
``allow``), the environment variable ``GRAPHOPT_ALLOW_OPS=Op1,Op2`` (or
``=all``), and the old names ``--allow-unsafe-ops`` and (while loading only)
``GRAPHOPT_ALLOW_UNSAFE_LOAD=1``. :func:`permission` merges them.

Nothing here imports TensorFlow at module level: the CLI imports it at start-up.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ALLOWED_OPS_FILE = Path(__file__).with_name("allowed_ops.toml")
ENV_ALLOW_OPS = "GRAPHOPT_ALLOW_OPS"
ENV_ALLOW_UNSAFE_LOAD = "GRAPHOPT_ALLOW_UNSAFE_LOAD"  # old name: "=1" allows every op while loading
NOT_LISTED = "is not on graphopt's allowlist of ops known to compute only"

# What a caller may pass as ``allow``: True (every op), op names, or nothing (False/None).
Allow = bool | Iterable[str] | None


@dataclass(frozen=True)
class Group:
    """One group of the data file: its kind (allowed/load_only/refused), name, reason and condition.

    ``refused`` is what a refusal says about a load-only op met outside loading (or its condition unmet).
    """

    kind: str
    name: str
    reason: str
    when: str | None = None
    refused: str | None = None


@dataclass(frozen=True)
class Allowlist:
    """The data file, by op name."""

    groups: dict[str, Group]

    def group(self, op: str) -> Group | None:
        return self.groups.get(op)

    def allowed(self, op: str, *, loading: bool = False) -> bool:
        """Whether ``op`` may run unconditionally (``loading``: also the unconditional load-only groups)."""
        group = self.groups.get(op)
        if group is None:
            return False
        return group.kind == "allowed" or loading and group.kind == "load_only" and group.when is None

    def reason(self, op: str) -> str:
        """Why ``op`` is refused, as the refusal message says it."""
        group = self.groups.get(op)
        if group is None or group.kind == "allowed":
            return NOT_LISTED
        return group.refused or group.reason

    def ops(self, kind: str = "allowed") -> list[str]:
        return sorted(op for op, g in self.groups.items() if g.kind == kind)


@cache
def allowlist() -> Allowlist:
    """The parsed ``allowed_ops.toml`` (read once)."""
    data = tomllib.loads(ALLOWED_OPS_FILE.read_text())
    groups: dict[str, Group] = {}
    for kind in ("allowed", "load_only", "refused"):
        for name, entry in data.get(kind, {}).items():
            group = Group(kind, name, entry["reason"], entry.get("when"), entry.get("refused"))
            for op in entry["ops"]:
                groups[op] = group
    return Allowlist(groups)


@dataclass(frozen=True)
class Permission:
    """What the user allowed beyond the allowlist: every op, or these op names."""

    all: bool = False
    ops: frozenset[str] = frozenset()

    def permits(self, op: str) -> bool:
        return self.all or op in self.ops

    def __bool__(self) -> bool:
        return self.all or bool(self.ops)


_CONTEXT: contextvars.ContextVar[Permission | None] = contextvars.ContextVar("graphopt_allow_ops", default=None)


def parse_names(text: str) -> Permission:
    """``"Op1,Op2"`` or ``"all"`` (as the environment variable and ``--allow-op`` take it)."""
    names = {n.strip() for n in text.split(",") if n.strip()}
    if "all" in {n.lower() for n in names}:
        return Permission(all=True)
    return Permission(ops=frozenset(names))


def _from_allow(allow: Allow) -> Permission:
    if allow is None or allow is False:
        return Permission()
    if allow is True:
        return Permission(all=True)
    if isinstance(allow, Permission):
        return allow
    if isinstance(allow, str):
        return parse_names(allow)
    names = {str(a).strip() for a in allow if str(a).strip()}
    return Permission(all=True) if "all" in {n.lower() for n in names} else Permission(ops=frozenset(names))


def permission(allow: Allow = None, *, loading: bool = False) -> Permission:
    """Everything allowed for this call: ``allow`` given by the caller, the one set by :func:`allowing`
    around it, ``GRAPHOPT_ALLOW_OPS``, and -- when ``loading`` -- ``GRAPHOPT_ALLOW_UNSAFE_LOAD=1``."""
    parts = [_from_allow(allow), _CONTEXT.get() or Permission(), parse_names(os.environ.get(ENV_ALLOW_OPS, ""))]
    if loading and os.environ.get(ENV_ALLOW_UNSAFE_LOAD, "").strip() == "1":
        parts.append(Permission(all=True))
    if any(p.all for p in parts):
        return Permission(all=True)
    return Permission(ops=frozenset().union(*(p.ops for p in parts)))


@contextlib.contextmanager
def allowing(allow: Allow) -> Iterator[Permission]:
    """Within the block, checks that get no explicit ``allow`` (the loaders') also permit ``allow``."""
    merged = permission(allow)
    token = _CONTEXT.set(merged)
    try:
        yield merged
    finally:
        _CONTEXT.reset(token)


def registered_ops() -> set[str]:
    """Every op name this process's TensorFlow registers."""
    from tensorflow.core.framework import op_def_pb2
    from tensorflow.python.client import pywrap_tf_session

    buffer = pywrap_tf_session.TF_GetAllOpList()
    try:
        ops = op_def_pb2.OpList.FromString(pywrap_tf_session.TF_GetBuffer(buffer))
    finally:
        pywrap_tf_session.TF_DeleteBuffer(buffer)
    return {op.name for op in ops.op}


def audit() -> dict[str, list[str]]:
    """``unclassified``: registered ops the data file does not name (refused, but unreviewed);
    ``unregistered``: names in the file this TensorFlow does not register."""
    registered, named = registered_ops(), set(allowlist().groups)
    return {"unclassified": sorted(registered - named), "unregistered": sorted(named - registered)}


if __name__ == "__main__":  # pragma: no cover - a maintenance aid after a TensorFlow upgrade
    import sys

    report = audit()
    for key, names in report.items():
        sys.stdout.write(f"{key} ({len(names)}):\n" + "".join(f"  {n}\n" for n in names))
