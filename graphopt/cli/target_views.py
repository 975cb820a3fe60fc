"""Rich views of the runtime targets: the cross-target benchmark table (``graphopt bench`` on exports)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:  # pragma: no cover
    from graphopt.targets.timing import TargetBenchReport


def _ratio(r: float | None) -> str:
    if r is None:
        return ""
    style = "green" if r < 0.995 else "red" if r > 1.005 else "dim"
    return f" [{style}]{r:.2f}x[/]"


def render_target_bench(report: TargetBenchReport) -> Table:
    """One column per source, one row per figure; ratio to the first source beside each value."""
    m = report.machine
    title = (f"graphopt bench: {report.rounds} alternating rounds x {report.runs} runs after {report.warmup} warm-up, "
             f"each runtime in its own process; {m.get('cpu')}, {m.get('cores')} cores; inputs {report.input_source}")
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for res in report.results:
        table.add_column(res.label, justify="right")

    def mb(v: float) -> str:
        return f"{v / 1e6:.2f}"

    rows = [("size on disk MB", "disk_bytes", mb), ("cold: load s", "load_s", lambda v: f"{v:.3f}"),
            ("cold: first request s", "first_run_s", lambda v: f"{v:.3f}"),
            ("cold: total s", "cold_s", lambda v: f"{v:.3f}"),
            ("peak memory MB (above runtime)", "peak_rss_bytes", mb),
            ("warm median ms", "median_ms", lambda v: f"{v:.2f}"), ("warm p90 ms", "p90_ms", lambda v: f"{v:.2f}")]
    first = report.results[0]
    for title_, name, fmt in rows:
        cells = []
        for res in report.results:
            v = getattr(res, name)
            cells.append("-" if v is None else fmt(v) + ("" if res is first else _ratio(res.ratios.get(name))))
        table.add_row(title_, *cells)
    table.add_row("median of per-round ratios", *("-" if r.round_ratio is None else f"{r.round_ratio:.2f}x"
                                                  for r in report.results))
    table.add_row("best call ratio", *("-" if r.min_ratio is None else f"{r.min_ratio:.2f}x" for r in report.results))
    table.add_row("max rel diff vs first", *("-" if r is first or r.max_rel is None else f"{r.max_rel:.2g}"
                                             for r in report.results))
    table.add_row("target / precision", *(f"{r.target} {r.precision}" for r in report.results))
    table.add_row("runtime", *(r.runtime for r in report.results))
    return table
