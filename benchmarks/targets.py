"""The targets of issue 5 item 6, checked against one run's results (never against figures typed by hand).

Each check gives ``met`` True/False, or None when a variant it needs was not
measured, and on a miss a note built from the measured numbers that says
where the shortfall is.
"""

from __future__ import annotations

from typing import Any

LATENCY_TARGETS = {"MobileNetV2": 0.95, "ResNet50": 0.97, "TF1 graph (unfused + v1 BN, CheckNumerics)": 0.86}
COLD_TARGETS = {"ResNet50": 0.35, "InceptionV3": 0.35}
FP16_SIZE, FP16_REL = 0.51, 1e-3
INT8_SIZE, INT8_ERROR_SHARE = 0.27, 0.25


def _v(result: dict, variant: str) -> dict | None:
    v = result["variants"].get(variant)
    return None if not v or v.get("skipped") or v.get("bench") is None else v


def _check(model: str, target: str, value: Any, limit: Any, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"model": model, "target": target, "value": value, "limit": limit, "met": met,
            "note": note if met is False or met is None else ""}


def _outputs_note(ver: dict) -> str:
    """Per-output differences, worst first: shows whether one output (e.g. after NMS) carries the error."""
    outs = sorted(ver.get("outputs", []), key=lambda o: -(o["max_rel"] if o["max_rel"] == o["max_rel"] else 1e300))
    parts = []
    for o in outs[:4]:
        text = f"{o['key']} {o['max_rel']:.2g}"
        if o.get("exact"):
            text += f" ({o['mismatched']} values differ, compared exactly)"
        elif o.get("mismatched"):
            text += f" ({o['mismatched']} values beyond tolerance)"
        parts.append(text)
    return "per output: " + ", ".join(parts) if parts else ""


def evaluate(result: dict) -> list[dict[str, Any]]:
    """Every target that applies to one model's results."""
    name = result["model"]
    out: list[dict[str, Any]] = []
    orig, serving = _v(result, "original"), _v(result, "serving")
    missing = "variant not measured in this run"
    for base in ("gtt-seed", "grappler-offline"):
        other = _v(result, base)
        for field, label in (("disk_bytes", "size"), ("nodes", "nodes")):
            if serving is None or other is None:
                out.append(_check(name, f"serving {label} <= {base}", None, None, None, missing))
                continue
            a, b = serving["bench"][field], other["bench"][field]
            note = f"serving {a:,} vs {base} {b:,} ({a / b:.3f}x)" if b else ""
            out.append(_check(name, f"serving {label} <= {base}", a, b, a <= b, note))
    if serving is None or orig is None:
        out.append(_check(name, "serving warm latency <= 1.00x", None, 1.0, None, missing))
    else:
        r = serving["bench"]["ratios"]["median_ms"]
        spread = orig["bench"]["warm"]["p90_ms"] / orig["bench"]["warm"]["median_ms"]
        note = (f"median {serving['bench']['warm']['median_ms']:.2f} ms vs {orig['bench']['warm']['median_ms']:.2f} ms; "
                f"the original's own p90/median in this run is {spread:.2f}x")
        out.append(_check(name, "serving warm latency <= 1.00x", r, 1.0, r <= 1.0, note))
        if name in LATENCY_TARGETS:
            lim = LATENCY_TARGETS[name]
            out.append(_check(name, f"serving warm latency <= {lim:.2f}x", r, lim, r <= lim, note))
    if name in COLD_TARGETS:
        lim = COLD_TARGETS[name]
        if serving is None or orig is None or serving["bench"].get("cold") is None:
            out.append(_check(name, f"serving cold start <= {lim:.2f}x (shipped config)", None, lim, None, missing))
        else:
            oc, sc = orig["bench"]["cold"], serving["bench"]["cold"]
            r = serving["bench"]["ratios"]["cold_s"]
            note = (f"load {oc['load_s']:.2f} s -> {sc['load_s']:.2f} s, first inference {oc['first_run_s']:.2f} s -> "
                    f"{sc['first_run_s']:.2f} s (runtime Grappler: {serving['bench']['grappler']})")
            out.append(_check(name, f"serving cold start <= {lim:.2f}x (shipped config)", r, lim, r <= lim, note))
    fp16 = _v(result, "serving-fp16")
    if fp16 is None or orig is None:
        out.append(_check(name, f"fp16 size <= {FP16_SIZE}x and rel diff <= {FP16_REL:g}", None, None, None, missing))
    else:
        size, rel = fp16["bench"]["ratios"]["disk_bytes"], fp16["verify"]["max_rel"]
        cshare = orig["bench"]["const_bytes"] / max(orig["bench"]["graph_bytes"], 1)
        note = f"size {size:.3f}x (constants are {cshare:.0%} of the original graph)"
        out.append(_check(name, f"fp16 size <= {FP16_SIZE}x", size, FP16_SIZE, size <= FP16_SIZE, note))
        out.append(_check(name, f"fp16 rel diff <= {FP16_REL:g}", rel, FP16_REL, rel <= FP16_REL,
                          _outputs_note(fp16["verify"])))
    int8, qws = _v(result, "serving-int8"), result.get("quantize_weights") or {}
    qw_base = "serving" if "serving" in qws else "original"
    qw = qws.get(qw_base)
    if int8 is None or orig is None:
        out.append(_check(name, f"int8 size <= {INT8_SIZE}x, error <= 1/4 of quantize_weights'", None, None, None,
                          missing))
    else:
        size, rel = int8["bench"]["ratios"]["disk_bytes"], int8["verify"]["max_rel"]
        cshare = orig["bench"]["const_bytes"] / max(orig["bench"]["graph_bytes"], 1)
        out.append(_check(name, f"int8 size <= {INT8_SIZE}x", size, INT8_SIZE, size <= INT8_SIZE,
                          f"size {size:.3f}x (constants are {cshare:.0%} of the original graph)"))
        if qw:
            lim = INT8_ERROR_SHARE * qw["max_rel"]
            note = (f"int8 rel diff {rel:.3g} vs quantize_weights on the {qw_base} graph {qw['max_rel']:.3g}; "
                    + _outputs_note(int8["verify"]))
            if qw.get("nan_mismatch"):
                note += f" (quantize_weights turned {qw['nan_mismatch']} output values into NaN)"
            out.append(_check(name, "int8 error <= 1/4 of quantize_weights'", rel, lim, rel <= lim, note))
            out[-1]["note"] = note  # worth showing even when met: the bar may be NaN-infinite
    return out
