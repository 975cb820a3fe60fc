"""Every rich view of graphopt's analysis: the per-pass report, the graph diff and ``inspect``.

Each ``render_*`` takes a ``rich.console.Console`` and plain data
(:class:`~graphopt.passes.pipeline.PipelineResult`, :class:`~graphopt.analysis.diff.GraphDiff`,
:class:`~graphopt.analysis.stats.GraphStats`) and prints. The views fit an 80-column
terminal and say everything in text as well as colour (``+``/``-``/``~`` marks,
status words), so they read the same with ``NO_COLOR`` or in a log file.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from rich.console import Console, ConsoleOptions, RenderableType, RenderHook, RenderResult
from rich.markup import escape
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # pragma: no cover
    from graphopt.analysis.diff import GraphDiff, NodeChange
    from graphopt.analysis.stats import GraphStats
    from graphopt.passes.pipeline import PipelineResult

BAR = "█"
BAR_WIDTH = 12
MAX_ROWS = 20

_STATUS = {  # status -> (mark, style); the mark carries the meaning without colour
    "applied": ("✓", "green"),
    "unchanged": ("·", "dim"),
    "rolled_back": ("↺", "yellow"),
    "failed": ("✗", "bold red"),
}


# --- names from a model reach the terminal escaped -----------------------------------------------------------
# Node, op, function and signature names, attribute values and paths come from files a stranger may have
# written. A raw ESC or other control character would let them recolour, rewrite or hide what graphopt
# prints (and Unicode bidi controls reorder it); "[bold]" in a name would be read as rich markup. Every
# view therefore shows such strings through printable() and as Text (never markup), and the consoles the
# CLI makes escape whatever control character still reaches them (install_escaping).

_BIDI_AND_INVISIBLE = r"\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb"
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f" + _BIDI_AND_INVISIBLE + "]")
_UNPRINTABLE_INLINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f" + _BIDI_AND_INVISIBLE + "]")  # keeps \t and \n


def _escape_char(match: re.Match) -> str:
    c = ord(match.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: object, *, newlines: bool = False) -> str:
    """``text`` with every control, bidi and zero-width character written as an escape (``\\x1b``).

    ``newlines=True`` keeps line breaks and tabs (multi-line messages); names never need them.
    """
    return (_UNPRINTABLE_INLINE if newlines else _UNPRINTABLE).sub(_escape_char, str(text))


def plain(text: object, style: str = "") -> Text:
    """A model's string as a rich ``Text``: escaped, never read as markup."""
    return Text(printable(text), style=style)


class _Escaped:
    """Renders another renderable and escapes control characters left in its text (not in rich's own
    control codes, which are separate segments)."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for segment in console.render(self.renderable, options):
            if segment.control or not _UNPRINTABLE_INLINE.search(segment.text):
                yield segment
            else:
                yield Segment(printable(segment.text, newlines=True), segment.style)


class _EscapeHook(RenderHook):
    """A rich render hook: every renderable printed on the console goes through :class:`_Escaped`."""

    def process_renderables(self, renderables: list[Any]) -> list[Any]:
        return [_Escaped(r) for r in renderables]  # type: ignore[misc]


def install_escaping(consoles: Iterable[Console]) -> None:
    """Make ``consoles`` escape control characters in anything printed on them (the CLI's safety net)."""
    for console in consoles:
        console.push_render_hook(_EscapeHook())


# Glyphs for terminals that cannot encode them (LANG=C, PYTHONIOENCODING=ascii); rich itself
# already switches table borders to ASCII there.
_ASCII = str.maketrans({"█": "#", "→": "->", "·": "|", "…": "...", "✓": "+", "↺": "~", "✗": "x",
                        "Δ": "d"})


def _encoding_safe(render: Callable[..., None]) -> Callable[..., None]:
    """Run ``render`` as is on UTF-8 consoles; elsewhere capture it and write ASCII stand-ins."""

    @functools.wraps(render)
    def wrapper(console: Console, *args: Any, **kwargs: Any) -> None:
        encoding = (console.encoding or "utf-8").lower()
        if encoding.startswith("utf"):
            return render(console, *args, **kwargs)
        with console.capture() as capture:
            render(console, *args, **kwargs)
        text = capture.get().translate(_ASCII)
        console.file.write(text.encode(encoding, "replace").decode(encoding))
        console.file.flush()

    return wrapper


def human_bytes(n: int | float) -> str:
    """``1536`` -> ``"1.5 KiB"``; exact bytes below 1 KiB."""
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{sign}{int(n)} B" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    return f"{sign}{n:.1f} GiB"  # pragma: no cover


def _pct(before: int, after: int) -> str:
    return f"{100.0 * (after - before) / before:+.1f}%" if before else "n/a"


def _signed(n: int) -> Text:
    return Text(f"{n:+d}", style="green" if n < 0 else "red" if n > 0 else "dim")


def _bar(count: int, top: int, style: str) -> Text:
    width = 0 if not top else max(1 if count else 0, round(BAR_WIDTH * count / top))
    return Text(BAR * width, style=style)


def _ops_delta_text(delta: dict[str, int], limit: int = 3) -> str:
    items = sorted(delta.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
    text = ", ".join(f"{d:+d} {printable(op)}" for op, d in items[:limit])
    return text + (f", +{len(items) - limit} more ops" if len(items) > limit else "")


# --- per-pass report -------------------------------------------------------------------


@_encoding_safe
def render_report(console: Console, result: "PipelineResult", *, title: str | None = "passes") -> None:
    """One row per pass run: status, nodes and size before -> after, op delta and counters, time."""
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False, expand=False)
    # Pass names never wrap: they are what a reader scans for; the changes column gives way instead.
    width = max((len(r.name) + (2 if r.iteration is None else 6) for r in result.records), default=12)
    table.add_column("pass", no_wrap=True, min_width=min(width, 32))
    table.add_column("nodes", justify="right", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("changes", overflow="fold", ratio=1)
    table.add_column("time", justify="right", no_wrap=True)
    for rec in result.records:
        mark, style = _STATUS.get(rec.status, ("?", ""))
        name = Text(f"{mark} {rec.name}", style=style)
        if rec.iteration is not None:
            name.append(f" #{rec.iteration}", style="dim")
        nodes = Text(f"{rec.nodes_before}→{rec.nodes_after}")
        if rec.nodes_after != rec.nodes_before:
            nodes.append(" ").append_text(_signed(rec.nodes_after - rec.nodes_before))
        size = Text(human_bytes(rec.size_after))
        if rec.size_after != rec.size_before:
            size.append(f" {_pct(rec.size_before, rec.size_after)}",
                        style="green" if rec.size_after < rec.size_before else "red")
        parts: list[Text] = []
        if rec.status != "applied":
            parts.append(Text(rec.status.replace("_", " "), style=style))
        if rec.ops_delta:
            parts.append(Text(_ops_delta_text(rec.ops_delta)))
        counters = {k: v for k, v in rec.counters.items() if v}  # zeros say nothing the status does not
        if counters:
            parts.append(Text(", ".join(f"{k}={v}" for k, v in counters.items()), style="cyan"))
        fn_changes = getattr(rec, "functions", None) or {}
        if fn_changes:
            items = [f"{printable(name)} {c['nodes_before']}→{c['nodes_after']}" + (
                f" ({_ops_delta_text(c['ops_delta'], 2)})" if c["ops_delta"] else "")
                for name, c in list(fn_changes.items())[:2]]
            more = f"; +{len(fn_changes) - 2} more functions" if len(fn_changes) > 2 else ""
            parts.append(Text(f"in {len(fn_changes)} function(s): " + "; ".join(items) + more, style="magenta"))
        if getattr(rec, "functions_pruned", None):
            parts.append(Text(f"pruned {len(rec.functions_pruned)} unused function(s)", style="magenta"))
        if rec.error:
            parts.append(plain(rec.error.split("\n")[0], style="red"))
        for note in rec.notes[:2]:
            parts.append(plain(note, style="dim"))
        changes = Text("\n").join(parts) if parts else Text("")
        table.add_row(name, nodes, size, changes, f"{rec.seconds:.2f}s")
    console.print(table)
    if result.records:
        first = result.records[0]
        n0, s0 = first.nodes_before, first.size_before
        n1 = result.model.node_count
        s1 = result.model.size_bytes
        line = Text("total: ", style="bold")
        line.append(f"nodes {n0} → {n1}, size {human_bytes(s0)} → {human_bytes(s1)} ({_pct(s0, s1)}), "
                    f"{len(result.records)} passes in {result.seconds:.2f}s")
        totals = [r.total for r in result.records if getattr(r, "total", None)]
        if totals and (totals[0]["nodes_before"] != n0 or totals[-1]["nodes_after"] != n1):
            line.append(f"; with function bodies {totals[0]['nodes_before']} → {totals[-1]['nodes_after']} nodes")
        console.print(line)


@_encoding_safe
def render_explanations(console: Console, explanations: list[dict[str, Any]], *, title: str | None = None) -> None:
    """One line per rule and candidate site (``✓`` fired, ``·`` not, and why), grouped by function body."""
    if title:
        fired = sum(1 for e in explanations if e["fired"])
        console.print(Text(f"{title}: {fired} fired, {len(explanations) - fired} not", style="bold"))
    where = object()
    for e in explanations:
        if e.get("function") != where:
            where = e.get("function")
            if where is not None:
                console.print(Text(f"  in function {where}", style="dim"))
        mark, style = ("✓", "green") if e["fired"] else ("·", "yellow")
        line = Text(f"  {mark} ", style=style)
        line.append(e["text"])
        console.print(line, soft_wrap=True)


# --- inspect -------------------------------------------------------------------------------


def _histogram_table(ops: dict[str, int], limit: int = MAX_ROWS) -> Table:
    table = Table(show_edge=False, pad_edge=False, box=None)
    table.add_column("op", overflow="fold")
    table.add_column("count", justify="right")
    table.add_column("", no_wrap=True)
    top = max(ops.values(), default=0)
    items = list(ops.items())
    for op, count in items[:limit]:
        table.add_row(plain(op), str(count), _bar(count, top, "cyan"))
    if len(items) > limit:
        rest = sum(c for _, c in items[limit:])
        table.add_row(Text(f"… {len(items) - limit} more ops", style="dim"), str(rest), "")
    return table


def _signature_table(stats: "GraphStats") -> Table:
    table = Table(show_edge=False, pad_edge=False, box=None)
    table.add_column("", style="bold")
    table.add_column("key")
    table.add_column("tensor", overflow="fold")
    table.add_column("dtype")
    table.add_column("shape", no_wrap=True)
    for kind, items in (("in", stats.inputs), ("out", stats.outputs)):
        for t in items:
            shape = "?" if t.get("shape") is None else "[" + ",".join("?" if d is None else str(d)
                                                                        for d in t["shape"]) + "]"
            table.add_row(kind, plain(t.get("key") or ""), plain(t["name"]), plain(t.get("dtype") or "?"), shape)
    return table


@_encoding_safe
def render_inspect(console: Console, stats: "GraphStats", *, limit: int = MAX_ROWS) -> None:
    """Signature, totals, op histogram as bars, largest constants and unreachable nodes."""
    head = plain(stats.source or "graph", style="bold")
    if stats.format:
        head.append(f" ({stats.format})", style="dim")
    if stats.signature:
        head.append(f"  signature {printable(stats.signature['key'])}", style="dim")
    console.print(head)
    console.print(_signature_table(stats))
    shape = "cyclic (TF1 loops)" if stats.cyclic else f"longest path {stats.longest_path}"
    console.print(
        f"[bold]{stats.nodes}[/] nodes, {stats.data_edges} data + {stats.control_edges} control edges, {shape}; "
        f"graph [bold]{human_bytes(stats.size_bytes)}[/], constants {human_bytes(stats.const_bytes)} "
        f"in {stats.const_count}, {stats.parameter_count:,} parameters; {stats.num_functions} functions",
        highlight=False)
    if stats.const_bytes_by_dtype:
        console.print("constants by dtype: " + ", ".join(f"{k} {human_bytes(v)}"
                                                         for k, v in stats.const_bytes_by_dtype.items()),
                      highlight=False)
    console.print(Text("\nops", style="bold"))
    console.print(_histogram_table(stats.ops, limit))
    if stats.largest_constants:
        console.print(Text("\nlargest constants", style="bold"))
        t = Table(show_edge=False, pad_edge=False, box=None)
        t.add_column("node", overflow="fold")
        t.add_column("dtype")
        t.add_column("shape", overflow="fold")
        t.add_column("size", justify="right", no_wrap=True)
        for c in stats.largest_constants:
            shape = "?" if c.shape is None else "[" + ",".join(map(str, c.shape)) + "]"  # compact: names need the room
            t.add_row(plain(c.name), plain(c.dtype), shape, human_bytes(c.bytes))
        console.print(t)
    if stats.unreachable:
        n = len(stats.unreachable)
        console.print(Text(f"\n{n} nodes unreachable from the outputs", style="bold yellow"))
        shown = stats.unreachable[:limit]
        console.print(escape(printable(", ".join(shown))) + (f" … and {n - len(shown)} more" if n > len(shown) else ""),
                      highlight=False, style="yellow")
    else:
        console.print(Text("\nevery node feeds an output", style="green"))
    if stats.unsafe_ops:
        n = len(stats.unsafe_ops)
        console.print(Text(f"\n{n} ops not known to compute only (optimize, verification, bench and serve "
                           "refuse to run them without --allow-op OP; docs/guide/security.md)", style="bold red"))
        for u in stats.unsafe_ops[:limit]:
            where = f"{u['function']}/{u['node']}" if u["function"] else u["node"]
            if u.get("nested"):
                where = f"[graph in {u['nested']}] {where}"
            console.print(f"  {escape(printable(where))}: {escape(printable(u['op']))} {escape(printable(u['reason']))}",
                          highlight=False,
                          style="red")
        if n > limit:
            console.print(f"  … and {n - limit} more", highlight=False, style="red")
    if stats.functions:
        console.print(Text(f"\nfunctions ({stats.num_functions})", style="bold"))
        for name in list(stats.functions)[:limit]:
            ops = stats.function_ops.get(name, {})
            top = ", ".join(f"{n} {op}" for op, n in list(ops.items())[:4]) + (" …" if len(ops) > 4 else "")
            console.print(f"  {escape(printable(name))}: {sum(ops.values())} nodes"
                          + (f" ({escape(printable(top))})" if top else ""),
                          highlight=False)
        if stats.num_functions > limit:
            console.print(f"  … and {stats.num_functions - limit} more", highlight=False, style="dim")
        console.print(Text("\nops in total (main graph and functions)", style="bold"))
        console.print(f"{stats.total_nodes} nodes", highlight=False)
        console.print(_histogram_table(stats.total_ops, limit))


# --- diff ------------------------------------------------------------------------------------


def diff_summary_text(diff: "GraphDiff") -> Text:
    """The one-line summary: coloured -removed +added ~changed, then nodes and size before -> after."""
    t = Text()
    t.append(f"-{len(diff.removed)} removed", style="red")
    t.append(", ")
    t.append(f"+{len(diff.added)} added", style="green")
    t.append(", ")
    t.append(f"~{len(diff.changed)} changed", style="yellow")
    if diff.renamed:
        t.append(f" ({diff.renamed} renamed)", style="yellow")
    t.append(f" (={diff.unchanged})", style="dim")
    t.append(f" · {diff.a.nodes}→{diff.b.nodes} nodes · {human_bytes(diff.a.size_bytes)}→"
             f"{human_bytes(diff.b.size_bytes)} {_pct(diff.a.size_bytes, diff.b.size_bytes)}")
    return t


def _histograms_side_by_side(diff: "GraphDiff", limit: int) -> Table:
    a, b = diff.a.ops, diff.b.ops
    delta = diff.ops_delta
    # Ops that changed first (largest change first), then the most common of the rest.
    ops = sorted(delta, key=lambda op: (-abs(delta[op]), op))
    rest = sorted((op for op in set(a) | set(b) if op not in delta), key=lambda op: (-max(a.get(op, 0), b.get(op, 0)),
                                                                                     op))
    rows = (ops + rest)[:limit]
    top = max([*a.values(), *b.values(), 0])
    table = Table(show_edge=False, pad_edge=False, box=None)
    table.add_column("op", overflow="fold")
    table.add_column("A", justify="right")
    table.add_column("", no_wrap=True)
    table.add_column("B", justify="right")
    table.add_column("", no_wrap=True)
    table.add_column("Δ", justify="right")
    for op in rows:
        ca, cb = a.get(op, 0), b.get(op, 0)
        table.add_row(plain(op), str(ca), _bar(ca, top, "blue"), str(cb), _bar(cb, top, "magenta"),
                      _signed(cb - ca) if cb != ca else Text(""))
    hidden = len(ops) + len(rest) - len(rows)
    if hidden:
        table.add_row(Text(f"… {hidden} more ops", style="dim"), "", "", "", "", "")
    return table


def _change_line(c: "NodeChange") -> Text:
    t = Text("~ ", style="yellow")
    t.append(printable(c.name), style="yellow")
    t.append(f" ({printable(c.op)})", style="dim")
    bits: list[str] = []
    if c.renamed_from:
        bits.append(f"renamed from {c.renamed_from}")
    if c.op_before:
        bits.append(f"op {c.op_before} → {c.op}")
    if c.inputs_before is not None:
        bits.append(f"inputs {', '.join(c.inputs_before) or '-'} → {', '.join(c.inputs_after or []) or '-'}")
    if c.device:
        bits.append(f"device {c.device[0] or '-'} → {c.device[1] or '-'}")
    for key, (before, after) in c.attrs.items():
        if before is None:
            bits.append(f"+attr {key}")
        elif after is None:
            bits.append(f"-attr {key}")
        else:
            bits.append(f"attr {key}: {before} → {after}")
    if bits:
        t.append(": " + printable("; ".join(bits)))
    return t


@_encoding_safe
def render_diff(console: Console, diff: "GraphDiff", *, limit: int = MAX_ROWS, neighbourhoods: int = 10) -> None:
    """Summary line, the two op histograms side by side, then the changed neighbourhoods."""
    console.print(diff_summary_text(diff))
    console.print(Text(f"A: {printable(diff.a.label)}\nB: {printable(diff.b.label)}", style="dim"), overflow="fold")
    if diff.identical:
        console.print(Text("the graphs are identical", style="green"))
        return
    console.print()
    console.print(_histograms_side_by_side(diff, limit))
    fn = diff.functions
    if any(fn.get(k) for k in ("added", "removed", "changed")):
        renamed = f" ({len(fn['renamed'])} renamed, same content)" if fn.get("renamed") else ""
        console.print(f"\nfunctions: -{len(fn['removed'])} +{len(fn['added'])} ~{len(fn['changed'])}{renamed}",
                      highlight=False)
        marks = {"removed": ("-", "red"), "added": ("+", "green"), "changed": ("~", "yellow")}
        for change in getattr(diff, "function_changes", [])[:limit]:
            mark, style = marks[change.status]
            line = Text(f"  {mark} {printable(change.name)}", style=style)
            if change.renamed_from:
                line.append(f" (was {printable(change.renamed_from)})", style="dim")
            line.append(f" {change.nodes_before}→{change.nodes_after} nodes", style="dim")
            if change.ops_delta:
                line.append(f": {_ops_delta_text(change.ops_delta)}")
            console.print(line, overflow="fold")
        a_total, b_total = diff.a.total_nodes, diff.b.total_nodes
        delta = diff.total_ops_delta
        console.print(f"in total (main graph and functions): {a_total}→{b_total} nodes"
                      + (f"; {escape(_ops_delta_text(delta, 6))}" if delta else ""), highlight=False)
    pruned = getattr(diff, "pruned_by_loading", {}) or {}
    for side, label in (("b", diff.b.label), ("a", diff.a.label)):
        if pruned.get(side):
            n = len(pruned[side])
            names = printable(", ".join(name for name, _ in pruned[side][:4])) + (" …" if n > 4 else "")
            other = "A" if side == "b" else "B"
            console.print(Text(f"\nloading {side.upper()} ({printable(label)}) pruned {n} node(s) its outputs do not "
                               f"need, which {other} still holds: not counted as changes ({names})", style="dim"),
                          overflow="fold")
    hoods = diff.neighbourhoods
    if not hoods:
        return
    console.print(Text(f"\nchanged neighbourhoods ({len(hoods)})", style="bold"))
    changes = {c.name: c for c in diff.changed}
    ops_a = dict(diff.removed)
    ops_b = dict(diff.added)
    for i, hood in enumerate(hoods[:neighbourhoods], 1):
        head = Text(f"[{i}] ", style="bold")
        head.append(f"-{len(hood.removed)}", style="red").append(" ")
        head.append(f"+{len(hood.added)}", style="green").append(" ")
        head.append(f"~{len(hood.changed)}", style="yellow")
        if hood.boundary:
            shown = hood.boundary[:4]
            head.append(f"  around {printable(', '.join(shown))}" + (" …" if len(hood.boundary) > 4 else ""), style="dim")
        console.print(head)
        lines: list[Text] = []
        for name in hood.removed:
            lines.append(Text(f"- {printable(name)} ({printable(ops_a.get(name, '?'))})", style="red"))
        for name in hood.added:
            lines.append(Text(f"+ {printable(name)} ({printable(ops_b.get(name, '?'))})", style="green"))
        for name in hood.changed:
            lines.append(_change_line(changes[name]))
        for line in lines[:limit]:
            console.print(Text("    ").append_text(line), overflow="fold")
        if len(lines) > limit:
            console.print(Text(f"    … {len(lines) - limit} more", style="dim"))
    if len(hoods) > neighbourhoods:
        console.print(Text(f"… {len(hoods) - neighbourhoods} more neighbourhoods (--json lists all)", style="dim"))


def render_json(console: Console, data: Any) -> None:
    """Machine-readable output: plain JSON, no markup or wrapping, nothing else on stdout."""
    import json

    console.file.write(json.dumps(data, indent=2) + "\n")
    console.file.flush()
