"""Figures from heats, and the pruning rule: successive halving that never drops what the noise cannot separate.

Every heat holds the anchor (the model as exported), and each candidate is
compared with the anchor *round by round*: the ratio of its median call in round
``r`` to the anchor's in the same round. Background load on a shared machine
moves both, so the ratio is steadier than either figure, and ratios from
different heats -- other times, other nodes of a cluster -- compare directly.

A candidate's figure at a rung is the median of its per-round ratios; its noise
is half the interquartile range of those ratios. Pruning after each rung:

1. a candidate **clearly slower** than the best -- by more than the larger of
   the noise floor and the two candidates' noise added -- is dropped. The floor
   is 3 % for the most-measured rung and grows as ``1/sqrt(rounds)`` below it
   (:func:`floor_for`): a spread taken from three rounds understates the noise,
   and a lucky first rung must not eliminate the runner-up;
2. of the rest, at most ``keep_fraction`` (rounded up, never fewer than two)
   go on to the next rung, which measures them with more rounds (successive
   halving), so the last decision is always made between real alternatives.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NOISE_FLOOR = 0.03  # ratios closer than 3 % are never told apart, even with the most rounds, on a shared machine
KEEP_FRACTION = 0.5
MIN_KEEP = 2


def floor_for(rounds: int, most_rounds: int) -> float:
    """The noise floor of a rung measured with ``rounds`` rounds when the last rung has ``most_rounds``."""
    return NOISE_FLOOR * math.sqrt(max(most_rounds, 1) / max(rounds, 1))


def _percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class Figure:
    """One candidate at one rung: its ratio to the anchor with noise, and its raw numbers."""

    ratio: float
    spread: float
    median: float  # ms per call (warm) or seconds (cold start), over every call of the rung
    p10: float
    p90: float
    anchor_median: float
    rounds: int
    calls: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def round_values(member: Mapping[str, Any], mode: str) -> list[float]:
    """Per-round figures of one heat member: the median call of each round (warm) or each fresh start (cold)."""
    if mode == "cold":
        return [float(v) for v in member.get("cold_s", [])]
    return [statistics.median(r) for r in member.get("times_ms", []) if r]


def all_values(member: Mapping[str, Any], mode: str) -> list[float]:
    if mode == "cold":
        return [float(v) for v in member.get("cold_s", [])]
    return [float(t) for r in member.get("times_ms", []) for t in r]


def figure(member: Mapping[str, Any], anchor: Mapping[str, Any], mode: str) -> Figure | None:
    """The figure of ``member`` against ``anchor`` measured in the same heat (None without common rounds)."""
    mine, theirs = round_values(member, mode), round_values(anchor, mode)
    n = min(len(mine), len(theirs))
    if n == 0:
        return None
    ratios = [mine[i] / theirs[i] for i in range(n) if theirs[i] > 0]
    if not ratios:
        return None
    calls = all_values(member, mode)
    spread = (_percentile(ratios, 0.75) - _percentile(ratios, 0.25)) / 2 if len(ratios) > 1 else float("nan")
    return Figure(ratio=statistics.median(ratios), spread=spread, median=statistics.median(calls),
                  p10=_percentile(calls, 0.10), p90=_percentile(calls, 0.90),
                  anchor_median=statistics.median(all_values(anchor, mode)), rounds=n, calls=len(calls))


def noise(f: Figure) -> float:
    return 0.0 if math.isnan(f.spread) else f.spread


def prune(figures: Mapping[str, Figure], *, noise_floor: float = NOISE_FLOOR, keep_fraction: float = KEEP_FRACTION,
          cap: bool = True, min_keep: int = MIN_KEEP) -> tuple[list[str], dict[str, str]]:
    """Survivors (fastest first) and a reason for each pruned candidate; see the module docstring."""
    if not figures:
        return [], {}
    ranked = sorted(figures, key=lambda c: figures[c].ratio)
    best = figures[ranked[0]]
    survivors, pruned = [], {}
    for cid in ranked:
        f = figures[cid]
        margin = max(noise_floor, noise(f) + noise(best))
        if f.ratio > best.ratio + margin:
            pruned[cid] = (f"clearly slower: {f.ratio:.3f}x the anchor vs the best {best.ratio:.3f}x "
                           f"(beyond the noise margin {margin:.3f})")
        else:
            survivors.append(cid)
    if cap:
        keep = max(min_keep, math.ceil(len(figures) * keep_fraction))
        for cid in survivors[keep:]:
            pruned[cid] = (f"not in the faster {keep_fraction:.0%} ({figures[cid].ratio:.3f}x vs best "
                           f"{best.ratio:.3f}x, within noise): successive halving")
        survivors = survivors[:keep]
    return survivors, pruned


def slower_than_anchor(f: Figure, *, noise_floor: float = NOISE_FLOOR) -> bool:
    """Whether ``f`` is slower than the model as exported (ratio 1.0) by more than its noise: not worth exporting."""
    return f.ratio > 1 + max(noise_floor, noise(f))


def tied(figures: Mapping[str, Figure], *, noise_floor: float = NOISE_FLOOR) -> list[str]:
    """The candidates the noise cannot separate from the fastest (the fastest included)."""
    if not figures:
        return []
    best_id = min(figures, key=lambda c: figures[c].ratio)
    best = figures[best_id]
    return [c for c, f in figures.items() if f.ratio <= best.ratio + max(noise_floor, noise(f) + noise(best))]
