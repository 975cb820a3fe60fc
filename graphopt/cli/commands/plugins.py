"""``graphopt plugins``: loaded plugins, the hooks each implements, and those that failed to load."""

from __future__ import annotations

import json

from graphopt.plugins import ENTRY_POINT_GROUP, ENV_ALLOW, ENV_NO_PLUGINS, plugin_summaries

HELP = "list loaded plugins and the hooks they implement"


def configure(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args, ctx) -> int:
    rows = plugin_summaries(ctx.host.pm)
    failed = [{k: v for k, v in f.__dict__.items() if k != "trace"} for f in ctx.host.registry.failures]
    if args.json:
        ctx.console.print_json(json.dumps({"plugins": rows, "failed": failed}))
        return 0
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="graphopt plugins", title_justify="left")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("from", no_wrap=True)
    table.add_column("hooks", ratio=1)
    for r in rows:
        source = f"{r['distribution']} {r['version'] or ''}".strip() if r["distribution"] else r["kind"]
        table.add_row(r["name"], source, "\n".join(r["hooks"]))
    for f in failed:
        source = f"{f['distribution']} {f['version'] or ''}".strip() if f["distribution"] else "?"
        table.add_row(f["plugin"], source, f"[red]failed:[/] {escape(f['error'])}")  # a plugin's text: no markup
    ctx.console.print(table)
    if not any(r["kind"] == "plugin" for r in rows):
        ctx.console.print(f"[dim]no third-party plugins loaded: install one (entry-point group "
                          f"'{ENTRY_POINT_GROUP}'), or check --no-plugins / {ENV_NO_PLUGINS} / {ENV_ALLOW}[/]")
    return 0
