"""The targets of issue 5 item 6 and issue 13 item 6, checked against one run's results (never against figures
typed by hand).

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


# --- issue 13, item 6: runtime targets (benchmarks/targets_runtimes.py) --------------------------------------

OPENVINO_F32_GEOMEAN, OPENVINO_BF16_GEOMEAN, OPENVINO_F32_REL = 0.30, 0.17, 1e-5


def _bench_row(result: dict, label: str) -> dict | None:
    return next((m for m in (result.get("bench") or {}).get("models", []) if m["label"] == label), None)


def evaluate_runtimes(data: dict) -> list[dict[str, Any]]:
    """Issue 13's targets from one run of benchmarks/targets_runtimes.py (geometric means over the Keras models)."""
    import math

    out: list[dict[str, Any]] = []
    models = [r for r in data["models"] if not r.get("error")]
    keras_models = [r for r in models if r["model"] != "demo detector"]

    def geomean(label: str) -> float | None:
        ratios = [(_bench_row(r, label) or {}).get("round_ratio") for r in keras_models]
        ratios = [x for x in ratios if x]
        if not ratios or len(ratios) < len(keras_models):
            return None
        return math.exp(sum(math.log(x) for x in ratios) / len(ratios))

    def best(label: str) -> str:
        ratios = [(_bench_row(r, label) or {}).get("min_ratio") for r in keras_models]
        ratios = [x for x in ratios if x]
        if not ratios:
            return ""
        return f"best-call ratio {math.exp(sum(math.log(x) for x in ratios) / len(ratios)):.2f}x"

    g = geomean("openvino f32")
    out.append(_check("Keras models", "openvino f32 geometric mean <= 0.30x of as exported", g,
                      OPENVINO_F32_GEOMEAN, None if g is None else g <= OPENVINO_F32_GEOMEAN, best("openvino f32")))
    g = geomean("openvino bf16")
    out.append(_check("Keras models", "openvino bf16 geometric mean <= 0.17x (CPU with bf16)", g,
                      OPENVINO_BF16_GEOMEAN, None if g is None else g <= OPENVINO_BF16_GEOMEAN, best("openvino bf16")))
    for r in models:
        name = r["model"]
        f32, raw = _bench_row(r, "openvino f32"), _bench_row(r, "openvino untouched")
        layers = r.get("openvino_layers")
        if layers:
            same = layers["graphopt"] <= layers["untouched"] and all(a <= b for a, b in layers["differ"].values())
            out.append(_check(name, "openvino f32 executes no layer the untouched model does not (compiled graphs)",
                              f"{layers['graphopt']} vs {layers['untouched']} layers", "no more", same,
                              "differ by type: " + str(layers["differ"])))
            out[-1]["note"] = "differ by type: " + (str(layers["differ"]) if layers["differ"] else "none")
        if f32 and raw:
            ratio = f32["round_ratio"] / raw["round_ratio"]
            out.append(_check(name, "openvino f32 never slower than OpenVINO on the untouched model", ratio, 1.0,
                              ratio <= 1.0, f"median {f32['median_ms']:.2f} ms vs {raw['median_ms']:.2f} ms, best call "
                                            f"{f32['min_ms']:.2f} ms vs {raw['min_ms']:.2f} ms"))
        if f32:
            out.append(_check(name, "openvino f32 relative difference <= 1e-5", f32["max_rel"], OPENVINO_F32_REL,
                              f32["max_rel"] is not None and f32["max_rel"] <= OPENVINO_F32_REL))
        bf16, int8 = _bench_row(r, "openvino bf16"), _bench_row(r, "openvino int8")
        if bf16 and int8:
            out.append(_check(name, "openvino int8 latency <= bf16's", int8["median_ms"] / bf16["median_ms"], 1.0,
                              int8["median_ms"] <= bf16["median_ms"],
                              f"{int8['median_ms']:.2f} ms vs {bf16['median_ms']:.2f} ms"))
        serving = _bench_row(r, "serving")
        for label in ("openvino f32", "openvino bf16", "openvino int8", "onnx"):
            row = _bench_row(r, label)
            if row and serving:
                out.append(_check(name, f"{label} cold start <= serving's", row["cold_s"] / serving["cold_s"], 1.0,
                                  row["cold_s"] <= serving["cold_s"],
                                  f"{row['cold_s']:.2f} s vs {serving['cold_s']:.2f} s"))
    return out
