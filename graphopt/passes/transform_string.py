"""GTT's transform-string syntax, parsed into structured steps before anything runs.

The grammar is the Graph Transform Tool's, extended by one construct::

    pipeline := item*                      (items separated by white space)
    item     := step | group
    step     := NAME [ "(" [ arg ("," arg)* ] ")" ]
    arg      := KEY "=" VALUE              VALUE is bare text up to "," ")" or white space,
                                           or "double quoted" (\\" and \\\\ escapes)
    group    := "{" item* "}" [ "*" INT ]  repeat until nothing changes, at most INT times (default 10)

Repeated keys are kept in order (``remove_nodes(op=Identity, op=CheckNumerics)``).
Errors point at the character where parsing failed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from graphopt.errors import UsageError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
DEFAULT_REPEAT = 10
MAX_REPEAT = 1000  # a bound, not a loop forever: "{ ... }*N" must stay a bounded fixpoint
MAX_DEPTH = 16  # nesting of groups; deeper text is a mistake (and would exhaust Python's stack)


@dataclass(frozen=True)
class StepSpec:
    """One transform: its name and its arguments as (key, raw string value) pairs."""

    name: str
    args: tuple[tuple[str, str], ...] = ()
    position: int = field(default=0, compare=False)  # for error messages, not identity

    def options(self) -> dict[str, str | list[str]]:
        """Arguments grouped by key: one value stays a string, repeated keys become a list."""
        out: dict[str, str | list[str]] = {}
        for key, value in self.args:
            if key in out:
                prev = out[key]
                out[key] = (prev if isinstance(prev, list) else [prev]) + [value]
            else:
                out[key] = value
        return out


@dataclass(frozen=True)
class GroupSpec:
    """Steps repeated until none of them changes the graph, at most ``max_iterations`` times."""

    steps: tuple["StepSpec | GroupSpec", ...] = field(default_factory=tuple)
    max_iterations: int = DEFAULT_REPEAT
    position: int = field(default=0, compare=False)  # for error messages, not identity


def pointer(text: str, pos: int, width: int = 70) -> list[str]:
    """Two lines showing ``text`` (one line, cut around ``pos`` if long) and a caret under ``pos``."""
    flat = "".join(" " if c in "\r\n\t" else c for c in text)
    start = max(0, min(pos - width // 2, len(flat) - width))
    shown = flat[start:start + width]
    prefix = "..." if start > 0 else ""
    suffix = "..." if start + width < len(flat) else ""
    return [f"  {prefix}{shown}{suffix}", "  " + " " * (len(prefix) + pos - start) + "^"]


def _error(text: str, pos: int, message: str, hint: str | None = None) -> UsageError:
    return UsageError(f"bad transform string: {message} at position {pos}", where="--transforms",
                      hint=hint, details=pointer(text, pos))


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def parse_items(self, closing: str | None) -> list[StepSpec | GroupSpec]:
        items: list[StepSpec | GroupSpec] = []
        while True:
            self.skip_ws()
            ch = self.peek()
            if not ch:
                if closing:
                    raise _error(self.text, self.pos, f"missing '{closing}'", "close the group opened with '{'")
                return items
            if closing and ch == closing:
                self.pos += 1
                return items
            if ch == "}":
                raise _error(self.text, self.pos, "unexpected '}'", "no group is open here")
            if ch == "{":
                items.append(self.parse_group())
            elif ch in ",":
                # GTT separates transforms by white space; a stray comma is a common slip.
                raise _error(self.text, self.pos, "unexpected ','", "separate transforms with spaces, not commas")
            else:
                items.append(self.parse_step())

    def parse_group(self) -> GroupSpec:
        start = self.pos
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _error(self.text, start, f"groups nested deeper than {MAX_DEPTH}")
        self.pos += 1
        steps = self.parse_items("}")
        self.depth -= 1
        if not steps:
            raise _error(self.text, start, "empty group", "put at least one transform inside { }")
        max_iterations = DEFAULT_REPEAT
        if self.peek() == "*":
            self.pos += 1
            m = re.compile(r"[0-9]+").match(self.text, self.pos)
            if not m or not 1 <= int(m.group()) <= MAX_REPEAT:
                raise _error(self.text, self.pos, f"expected a repeat count from 1 to {MAX_REPEAT} after '*'")
            max_iterations = int(m.group())
            self.pos = m.end()
        return GroupSpec(tuple(steps), max_iterations, start)

    def parse_step(self) -> StepSpec:
        start = self.pos
        m = _NAME.match(self.text, self.pos)
        if not m:
            raise _error(self.text, self.pos, f"unexpected {self.peek()!r}, expected a transform name")
        self.pos = m.end()
        args: list[tuple[str, str]] = []
        if self.peek() == "(":
            self.pos += 1
            self.skip_ws()
            if self.peek() == ")":
                self.pos += 1
            else:
                while True:
                    self.skip_ws()
                    args.append(self.parse_arg(m.group()))
                    self.skip_ws()
                    ch = self.peek()
                    if ch == ",":
                        self.pos += 1
                        continue
                    if ch == ")":
                        self.pos += 1
                        break
                    if not ch:
                        raise _error(self.text, self.pos, f"missing ')' for '{m.group()}('")
                    raise _error(self.text, self.pos, f"unexpected {ch!r} in the arguments of {m.group()}",
                                 "separate arguments with ',' and quote values that contain ',' or ')'")
        nxt = self.peek()
        if nxt and not nxt.isspace() and nxt not in "{}":
            raise _error(self.text, self.pos, f"unexpected {nxt!r} after '{m.group()}'",
                         "separate transforms with spaces; arguments go in (key=value)")
        return StepSpec(m.group(), tuple(args), start)

    def parse_arg(self, step: str) -> tuple[str, str]:
        m = _KEY.match(self.text, self.pos)
        if not m:
            raise _error(self.text, self.pos, f"expected an argument name in {step}(...)", "write key=value")
        key = m.group()
        self.pos = m.end()
        self.skip_ws()
        if self.peek() != "=":
            raise _error(self.text, self.pos, f"expected '=' after '{key}'", f"write {key}=value")
        self.pos += 1
        self.skip_ws()
        if self.peek() == '"':
            return key, self.parse_quoted()
        start = self.pos
        # A bare value ends at white space too, as in GTT: "a(k=v w=x)" is a missing comma, not k="v w=x".
        while self.peek() and self.peek() not in ",)" and not self.peek().isspace():
            if self.peek() == '"':
                raise _error(self.text, self.pos, "a quote inside an unquoted value", "quote the whole value")
            self.pos += 1
        value = self.text[start:self.pos].strip()
        if not value:
            raise _error(self.text, start, f"empty value for '{key}'", f'write {key}=value or {key}=""')
        return key, value

    def parse_quoted(self) -> str:
        start = self.pos
        self.pos += 1
        out: list[str] = []
        while True:
            ch = self.peek()
            if not ch:
                raise _error(self.text, start, "unbalanced quote", 'close the value with a matching "')
            self.pos += 1
            if ch == "\\" and self.peek() in ('"', "\\"):
                out.append(self.peek())
                self.pos += 1
            elif ch == '"':
                return "".join(out)
            else:
                out.append(ch)


def parse(text: str) -> list[StepSpec | GroupSpec]:
    """Parse a transform string. Raises :class:`~graphopt.errors.UsageError` pointing at the fault.

    ``UsageError`` is the only exception this raises, whatever the input.
    """
    if not isinstance(text, str):
        raise UsageError(f"a transform string must be text, not {type(text).__name__}", where="--transforms")
    return _Parser(text).parse_items(None)


def _quote(value: str) -> str:
    if value and not re.search(r'[\s,()"{}\\]', value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_step(name: str, args: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> str:
    """The inverse of parsing one step: ``name(key=value, ...)`` with quoting where needed."""
    if not args:
        return name
    return f"{name}({', '.join(f'{k}={_quote(v)}' for k, v in args)})"


def format_items(items: list[StepSpec | GroupSpec] | tuple[StepSpec | GroupSpec, ...]) -> str:
    parts = []
    for item in items:
        if isinstance(item, GroupSpec):
            parts.append("{ " + format_items(item.steps) + " }*" + str(item.max_iterations))
        else:
            parts.append(format_step(item.name, item.args))
    return " ".join(parts)
