"""The Pareto plot of a search: latency (ratio to the model as exported) against output error, as a small SVG.

Written by hand rather than with matplotlib, which graphopt does not depend on.
Every benchmarked candidate is a point (hover shows its label and figures); the
non-dominated ones -- no other candidate is both faster and more accurate -- are
joined by the Pareto front; the winner is a star, the anchor a square. Exact
candidates (error 0) sit on the left edge.
"""

from __future__ import annotations

import math
from typing import Any
from xml.sax.saxutils import escape

W, H = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 70, 190, 40, 60
ERR_FLOOR = 1e-9
COLORS = {"winner": "#d62728", "finalist": "#1f77b4", "pruned": "#9a9a9a", "anchor": "#000000"}


def points(result: Any) -> list[dict[str, Any]]:
    """``{label, status, error, ratio, spread}`` for every candidate that has a figure."""
    out = []
    for t in result.trials:
        if t.figure is None:
            continue
        err = t.max_rel
        err = 0.0 if err is None or (isinstance(err, float) and math.isnan(err)) else float(err)
        out.append({"label": t.candidate.label, "status": t.status, "error": err, "ratio": t.figure.ratio,
                    "spread": race_noise(t.figure), "size": t.disk_bytes})
    return out


def race_noise(figure: Any) -> float:
    return 0.0 if figure.spread is None or math.isnan(figure.spread) else float(figure.spread)


def pareto_front(pts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points no other point beats on both error and ratio, by increasing error."""
    front: list[dict[str, Any]] = []
    for p in sorted(pts, key=lambda q: (q["error"], q["ratio"])):
        if not front or p["ratio"] < front[-1]["ratio"]:
            front.append(p)
    return front


def pareto_svg(result: Any) -> str:
    pts = points(result)
    metric = "cold start" if result.objective == "cold-start" else "warm latency"
    anchor_ms = None
    if result.anchor is not None and result.anchor.figure is not None:
        anchor_ms = result.anchor.figure.median
    unit = "s" if result.objective == "cold-start" else "ms"
    title = f"{escape(str(result.source))}: {metric} vs error ({len(pts)} candidates benchmarked)"
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
             'font-family="sans-serif" font-size="11">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             f'<text x="{LEFT}" y="20" font-size="13">{title}</text>']
    if not pts:
        parts.append(f'<text x="{LEFT}" y="{H / 2}">no candidate was benchmarked</text></svg>')
        return "\n".join(parts)
    errs = [max(p["error"], ERR_FLOOR) for p in pts]
    lo_e = math.floor(math.log10(min(errs)))
    hi_e = max(lo_e + 1, math.ceil(math.log10(max(errs))))
    ratios = [p["ratio"] for p in pts]
    lo_r, hi_r = min(ratios + [1.0]), max(ratios + [1.0])
    pad = max(0.02, (hi_r - lo_r) * 0.1)
    lo_r, hi_r = lo_r - pad, hi_r + pad
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(err: float) -> float:
        return LEFT + (math.log10(max(err, ERR_FLOOR)) - lo_e) / (hi_e - lo_e) * pw

    def y(r: float) -> float:
        return TOP + (hi_r - r) / (hi_r - lo_r) * ph

    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    for e in range(lo_e, hi_e + 1):
        xx = x(10.0 ** e)
        label = "0" if e == lo_e and any(p["error"] == 0 for p in pts) and 10.0 ** e <= ERR_FLOOR else f"1e{e}"
        parts.append(f'<line x1="{xx:.1f}" y1="{TOP + ph}" x2="{xx:.1f}" y2="{TOP + ph + 4}" stroke="#444"/>')
        parts.append(f'<text x="{xx:.1f}" y="{TOP + ph + 16}" text-anchor="middle">{label}</text>')
    step = _nice_step((hi_r - lo_r) / 6)
    r = math.ceil(lo_r / step) * step
    while r <= hi_r:
        yy = y(r)
        parts.append(f'<line x1="{LEFT - 4}" y1="{yy:.1f}" x2="{LEFT + pw}" y2="{yy:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{r:.2f}x</text>')
        r += step
    parts.append(f'<line x1="{LEFT}" y1="{y(1.0):.1f}" x2="{LEFT + pw}" y2="{y(1.0):.1f}" stroke="#000" '
                 'stroke-dasharray="4,3"/>')
    ms = f" = {anchor_ms:.3g} {unit}" if anchor_ms else ""
    parts.append(f'<text x="{LEFT + pw - 4}" y="{y(1.0) - 4:.1f}" text-anchor="end">as exported{escape(ms)}</text>')
    parts.append(f'<text x="{LEFT + pw / 2}" y="{H - 18}" text-anchor="middle">max relative output difference '
                 '(log; 0 = exact)</text>')
    parts.append(f'<text transform="translate(16,{TOP + ph / 2}) rotate(-90)" text-anchor="middle">'
                 f'{metric}, ratio to the model as exported (lower is better)</text>')
    front = pareto_front(pts)
    if len(front) > 1:
        path = " ".join(f"{x(p['error']):.1f},{y(p['ratio']):.1f}" for p in front)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#2ca02c" stroke-width="1.5"/>')
    for p in sorted(pts, key=lambda q: q["status"] == "winner"):
        cx, cy = x(p["error"]), y(p["ratio"])
        color = COLORS.get(p["status"], "#9a9a9a")
        tip = (f"{p['label']} ({p['status']}): {p['ratio']:.3f}x +/- {p['spread']:.3f}, "
               f"error {p['error']:.2g}" + (f", {p['size'] / 1e6:.2f} MB" if p.get("size") else ""))
        if p["spread"]:
            parts.append(f'<line x1="{cx:.1f}" y1="{y(p["ratio"] - p["spread"]):.1f}" x2="{cx:.1f}" '
                         f'y2="{y(p["ratio"] + p["spread"]):.1f}" stroke="{color}" stroke-opacity="0.5"/>')
        if p["status"] == "winner":
            shape = _star(cx, cy, 9, color)
        elif p["status"] == "anchor":
            shape = f'<rect x="{cx - 5:.1f}" y="{cy - 5:.1f}" width="10" height="10" fill="{color}"/>'
        else:
            shape = f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4.5" fill="{color}" fill-opacity="0.8"/>'
        parts.append(f'<g><title>{escape(tip)}</title>{shape}</g>')
    ly = TOP
    for status in ("winner", "finalist", "pruned", "anchor"):
        if any(p["status"] == status for p in pts):
            parts.append(f'<circle cx="{W - RIGHT + 20}" cy="{ly + 6}" r="4.5" fill="{COLORS[status]}"/>'
                         f'<text x="{W - RIGHT + 30}" y="{ly + 10}">{status}</text>')
            ly += 18
    parts.append(f'<line x1="{W - RIGHT + 14}" y1="{ly + 6}" x2="{W - RIGHT + 26}" y2="{ly + 6}" stroke="#2ca02c"/>'
                 f'<text x="{W - RIGHT + 30}" y="{ly + 10}">Pareto front</text>')
    ly += 26
    for p in front[:8]:
        text = p["label"] if len(p["label"]) <= 30 else p["label"][:29] + "…"
        parts.append(f'<text x="{W - RIGHT + 14}" y="{ly}" fill="#2ca02c">{escape(text)}</text>')
        ly += 14
    parts.append("</svg>")
    return "\n".join(parts)


def _nice_step(raw: float) -> float:
    if raw <= 0:
        return 0.1
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _star(cx: float, cy: float, r: float, color: str) -> str:
    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.45
        a = math.pi / 2 + i * math.pi / 5
        pts.append(f"{cx + rad * math.cos(a):.1f},{cy - rad * math.sin(a):.1f}")
    return f'<polygon points="{" ".join(pts)}" fill="{color}"/>'
