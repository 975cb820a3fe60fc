"""Every rich view of graphopt's analysis: the per-pass report, the graph diff and ``inspect``.

Each ``render_*`` takes a ``rich.console.Console`` and plain data
(:class:`~graphopt.passes.pipeline.PipelineResult`, :class:`~graphopt.analysis.diff.GraphDiff`,
:class:`~graphopt.analysis.stats.GraphStats`) and prints. The views fit an 80-column
terminal and say everything in text as well as colour (``+``/``-``/``~`` marks,
status words), so they read the same with ``NO_COLOR`` or in a log file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
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
    text = ", ".join(f"{d:+d} {op}" for op, d in items[:limit])
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
        if rec.error:
            parts.append(Text(rec.error.split("\n")[0], style="red"))
        for note in rec.notes[:2]:
            parts.append(Text(note, style="dim"))
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
        console.print(line)


# --- inspect -------------------------------------------------------------------------------


def _histogram_table(ops: dict[str, int], limit: int = MAX_ROWS) -> Table:
    table = Table(show_edge=False, pad_edge=False, box=None)
    table.add_column("op", overflow="fold")
    table.add_column("count", justify="right")
    table.add_column("", no_wrap=True)
    top = max(ops.values(), default=0)
    items = list(ops.items())
    for op, count in items[:limit]:
        table.add_row(op, str(count), _bar(count, top, "cyan"))
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
            table.add_row(kind, t.get("key") or "", t["name"], t.get("dtype") or "?", shape)
    return table


@_encoding_safe
def render_inspect(console: Console, stats: "GraphStats", *, limit: int = MAX_ROWS) -> None:
    """Signature, totals, op histogram as bars, largest constants and unreachable nodes."""
    head = Text(stats.source or "graph", style="bold")
    if stats.format:
        head.append(f" ({stats.format})", style="dim")
    if stats.signature:
        head.append(f"  signature {stats.signature['key']}", style="dim")
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
            t.add_row(c.name, c.dtype, shape, human_bytes(c.bytes))
        console.print(t)
    if stats.unreachable:
        n = len(stats.unreachable)
        console.print(Text(f"\n{n} nodes unreachable from the outputs", style="bold yellow"))
        shown = stats.unreachable[:limit]
        console.print(escape(", ".join(shown)) + (f" … and {n - len(shown)} more" if n > len(shown) else ""),
                      highlight=False, style="yellow")
    else:
        console.print(Text("\nevery node feeds an output", style="green"))
    if stats.unsafe_ops:
        n = len(stats.unsafe_ops)
        console.print(Text(f"\n{n} ops reach outside the process (verify, bench and serve refuse to run them "
                           "without --allow-unsafe-ops)", style="bold red"))
        for u in stats.unsafe_ops[:limit]:
            where = f"{u['function']}/{u['node']}" if u["function"] else u["node"]
            console.print(f"  {escape(where)}: {u['op']} {u['reason']}", highlight=False, style="red")
        if n > limit:
            console.print(f"  … and {n - limit} more", highlight=False, style="red")
    if stats.functions:
        console.print(Text(f"\nfunctions ({stats.num_functions})", style="bold"))
        for name, count in list(stats.functions.items())[:limit]:
            console.print(f"  {escape(name)}: {count} nodes", highlight=False)


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
        table.add_row(op, str(ca), _bar(ca, top, "blue"), str(cb), _bar(cb, top, "magenta"),
                      _signed(cb - ca) if cb != ca else Text(""))
    hidden = len(ops) + len(rest) - len(rows)
    if hidden:
        table.add_row(Text(f"… {hidden} more ops", style="dim"), "", "", "", "", "")
    return table


def _change_line(c: "NodeChange") -> Text:
    t = Text("~ ", style="yellow")
    t.append(c.name, style="yellow")
    t.append(f" ({c.op})", style="dim")
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
        t.append(": " + "; ".join(bits))
    return t


@_encoding_safe
def render_diff(console: Console, diff: "GraphDiff", *, limit: int = MAX_ROWS, neighbourhoods: int = 10) -> None:
    """Summary line, the two op histograms side by side, then the changed neighbourhoods."""
    console.print(diff_summary_text(diff))
    console.print(Text(f"A: {diff.a.label}\nB: {diff.b.label}", style="dim"), overflow="fold")
    if diff.identical:
        console.print(Text("the graphs are identical", style="green"))
        return
    console.print()
    console.print(_histograms_side_by_side(diff, limit))
    fn = diff.functions
    if any(fn.values()):
        console.print(f"\nfunctions: -{len(fn['removed'])} +{len(fn['added'])} ~{len(fn['changed'])}", highlight=False)
        for kind, mark in (("removed", "-"), ("added", "+"), ("changed", "~")):
            for name in fn[kind][:limit]:
                console.print(f"  {mark} {escape(name)}", highlight=False)
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
            head.append(f"  around {', '.join(shown)}" + (" …" if len(hood.boundary) > 4 else ""), style="dim")
        console.print(head)
        lines: list[Text] = []
        for name in hood.removed:
            lines.append(Text(f"- {name} ({ops_a.get(name, '?')})", style="red"))
        for name in hood.added:
            lines.append(Text(f"+ {name} ({ops_b.get(name, '?')})", style="green"))
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
