"""``graphopt plugins``: loaded plugins, the hooks each implements, and those that failed."""

from __future__ import annotations

import json

from graphopt.plugins import plugin_summaries

HELP = "list loaded plugins and the hooks they implement"


def configure(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args, ctx) -> int:
    rows = plugin_summaries(ctx.host.pm)
    failed = [f.__dict__ for f in ctx.host.registry.failures]
    if args.json:
        ctx.console.print_json(json.dumps({"plugins": rows, "failed": failed}))
        return 0
    from rich.table import Table

    table = Table(title="graphopt plugins", title_justify="left")
    for col in ("name", "kind", "distribution", "hooks"):
        table.add_column(col)
    for r in rows:
        dist = f"{r['distribution']} {r['version']}" if r["distribution"] else "-"
        table.add_row(r["name"], r["kind"], dist, ", ".join(r["hooks"]))
    for f in failed:
        table.add_row(f["plugin"], "[red]failed[/]", f"{f['distribution'] or '-'} {f['version'] or ''}", f["error"])
    ctx.console.print(table)
    return 0
