"""``graphopt passes``: every pass and preset with its origin and description."""

from __future__ import annotations

import json

HELP = "list every pass and preset: native GTT, built-in and from plugins"


def configure(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def listing(host) -> list[dict]:
    reg = host.registry
    rows = []
    for name, info in sorted(reg.passes.items()):
        cls = info.cls
        rows.append({"name": name, "kind": "pass", "origin": info.origin.to_dict(), "description": cls.description,
                     "lossy": bool(cls.lossy),
                     "options": {k: {"type": o.type.__name__, "default": o.default, "required": o.required,
                                     "help": o.help} for k, o in cls.options.items()}})
    for name, preset in sorted(reg.presets.items()):
        rows.append({"name": name, "kind": "preset", "origin": preset.origin.to_dict(),
                     "description": preset.description, "lossy": preset.lossy, "transforms": preset.transforms})
    return rows


def run(args, ctx) -> int:
    rows = listing(ctx.host)
    if args.json:
        ctx.console.print_json(json.dumps(rows))
        return 0
    from rich.table import Table

    table = Table(title="graphopt passes and presets", title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("kind")
    table.add_column("origin")
    table.add_column("description")
    for row in rows:
        o = row["origin"]
        origin = o["kind"] if o["kind"] != "plugin" else f"{o['distribution'] or o['plugin']} {o['version'] or ''}"
        desc = row["description"] + (" [lossy]" if row["lossy"] else "")
        if row["kind"] == "preset":
            desc += f"\n[dim]{row['transforms']}[/]"
        table.add_row(row["name"], row["kind"], origin, desc)
    ctx.console.print(table)
    return 0
