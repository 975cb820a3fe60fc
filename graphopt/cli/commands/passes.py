"""``graphopt passes``: every pass and preset with its origin and description; one in detail with NAME."""

from __future__ import annotations

import json

HELP = "list every pass and preset: native GTT, built-in and from plugins"


def configure(parser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME", help="show one pass or preset in detail (its options)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _origin_text(origin: dict) -> str:
    if origin["kind"] != "plugin":
        return origin["kind"]
    return f"{origin['distribution'] or origin['plugin']} {origin['version'] or ''}".strip()


def listing(host) -> list[dict]:
    """One dict per pass and preset: name, kind, origin (kind/plugin/distribution/version), description..."""
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


def _detail(ctx, row: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = ctx.console
    console.print(f"[bold]{row['name']}[/] ({row['kind']}, from {_origin_text(row['origin'])})"
                  + (" [yellow]lossy[/]" if row["lossy"] else ""), highlight=False)
    console.print(row["description"], highlight=False, markup=False)
    if row["kind"] == "preset":
        console.print(f"transforms: {row['transforms']}", highlight=False, markup=False, soft_wrap=True)
        return
    table = Table(title_justify="left", show_edge=False)
    for col in ("option", "type", "default", "help"):
        table.add_column(col, no_wrap=col != "help")
    for key, opt in row["options"].items():
        default = "[red]required[/]" if opt["required"] else ("-" if opt["default"] in (None, []) else
                                                           json.dumps(opt["default"]))
        table.add_row(key, opt["type"], default, escape(opt["help"]))
    table.add_row("ignore_errors", "bool", "false", "on failure, roll this pass back and go on")
    console.print(table)


def run(args, ctx) -> int:
    from rich.markup import escape

    from graphopt.errors import UsageError

    rows = listing(ctx.host)
    if args.name:
        match = [r for r in rows if r["name"] == args.name]
        if not match:
            raise UsageError(f"no pass or preset called '{args.name}'", where="passes",
                             hint=ctx.host.registry.suggest(args.name))
        rows = match
    if args.json:
        ctx.console.print_json(json.dumps(rows[0] if args.name else rows, default=str))
        return 0
    if args.name:
        _detail(ctx, rows[0])
        return 0
    from rich import box
    from rich.table import Table

    for kind, title in (("pass", "passes"), ("preset", "presets")):
        # Two columns, the name (with its origin under it) never wrapped, so at 80 columns the
        # description keeps ~45 characters a line instead of one or two words.
        table = Table(title=f"graphopt {title}", title_justify="left", box=box.SIMPLE_HEAD, expand=False,
                      pad_edge=False)
        table.add_column("name / origin", no_wrap=True)
        table.add_column("description", ratio=1, min_width=30)
        for row in rows:
            if row["kind"] != kind:
                continue
            # escaped: plugin descriptions and transform strings may hold [brackets] rich reads as markup
            desc = escape(row["description"])
            if row["lossy"] and "lossy" not in row["description"].lower():
                desc += " [yellow](lossy)[/]"
            if kind == "preset":
                desc += f"\n[dim]{escape(row['transforms'])}[/]"
            table.add_row(f"[bold]{escape(row['name'])}[/]\n[dim]{escape(_origin_text(row['origin']))}[/]", desc)
        ctx.console.print(table)
    ctx.console.print("[dim]graphopt passes NAME shows a pass's options[/]")
    return 0
