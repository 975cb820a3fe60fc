"""``--allow-op NAME``: the one way every command that runs a model lets the user allow an op, per op.

Commands call :func:`add_allow_arguments` in ``configure`` and pass
:func:`allowed_ops` on to the core (``optimize(allow_unsafe=...)``,
``load(allow_ops=...)``, ``bench``, ``DevServer``). The allowlist and what the
environment adds (``GRAPHOPT_ALLOW_OPS``) live in :mod:`graphopt.security.allowlist`;
docs/guide/security.md says what is refused and why.
"""

from __future__ import annotations

from typing import Any

from graphopt.errors import UsageError


def add_allow_arguments(parser: Any, *, what: str = "run") -> None:
    """``--allow-op`` (repeatable) and its old name ``--allow-unsafe-ops``. ``what`` says what the command does
    with the model ("run", "load", "serve"), for the help text."""
    parser.add_argument(
        "--allow-op", action="append", default=[], metavar="OP",
        help=f"{what} the model even though it holds OP, an op not on graphopt's allowlist of ops known to "
             "compute only (repeat per op; 'all' allows every op; also GRAPHOPT_ALLOW_OPS=Op1,Op2 or =all). "
             "See docs/guide/security.md")
    parser.add_argument(
        "--allow-unsafe-ops", nargs="?", const="all", default=None, metavar="OP,OP",
        help="old name of --allow-op: alone it allows every op, with OP1,OP2 those ops")


def allowed_ops(args: Any) -> bool | list[str]:
    """What the flags allow: True (every op), the op names, or False. An op name TensorFlow does not know
    is a :class:`UsageError` (a typo would otherwise allow nothing and look like a refusal)."""
    names: list[str] = []
    values = [*(getattr(args, "allow_op", None) or []), getattr(args, "allow_unsafe_ops", None) or ""]
    for value in values:
        names.extend(n.strip() for n in str(value).split(",") if n.strip())
    if any(n.lower() == "all" for n in names):
        return True
    if not names:
        return False
    _check_names(names)
    return sorted(set(names))


def _check_names(names: list[str]) -> None:
    import difflib

    from graphopt.security.allowlist import allowlist, registered_ops

    known = registered_ops() | set(allowlist().groups)
    # Besides ops, a refusal can name the load-time role of a TF2 object's function (see graphopt.security.scan).
    known |= {"_create_resource", "_initialize", "_destroy_resource", "save_function", "restore_function"}
    unknown = [n for n in names if n not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=3)
        raise UsageError(f"--allow-op {unknown[0]}: TensorFlow has no op of that name", where="--allow-op",
                         hint=(f"did you mean {', '.join(close)}? " if close else "")
                         + "op names are case-sensitive, as `graphopt inspect` lists them")
