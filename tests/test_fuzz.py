"""Fuzzing with a bounded budget: nothing but graphopt's own error type may escape.

Budgets are fixed (max_examples, no deadline) so CI time stays predictable.
"""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphopt import transform_spec
from graphopt.errors import GraphoptError, UsageError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text built from the characters the grammar cares about, so most inputs get deep into the parser.
_alphabet = string.ascii_letters[:6] + "_=,(){}*\" \\\t0123456789.-:"
_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
_values = st.text(alphabet=string.printable, max_size=8)


@FUZZ
@given(st.text(alphabet=_alphabet, max_size=60))
def test_parser_only_raises_usage_error(text):
    try:
        items = transform_spec.parse(text)
    except UsageError as exc:
        assert "position" in exc.message
        return
    # Whatever parses must format back to text that parses to the same thing.
    assert transform_spec.parse(transform_spec.format_items(items)) == items


@FUZZ
@given(st.lists(st.tuples(_names, st.lists(st.tuples(_names, _values), max_size=3)), min_size=1, max_size=4))
def test_format_then_parse_round_trips(steps):
    text = " ".join(transform_spec.format_step(name, args) for name, args in steps)
    parsed = transform_spec.parse(text)
    assert [(p.name, list(p.args)) for p in parsed] == [(n, [(k, v.strip() if _bare(v) else v) for k, v in a])
                                                        for n, a in steps]


def _bare(value: str) -> bool:
    # format_step leaves simple values unquoted; unquoted values are stripped of surrounding space.
    return transform_spec._quote(value) == value


def test_positions_do_not_count_in_equality_but_names_and_args_do():
    assert transform_spec.parse("x(a=1)") == transform_spec.parse("  x(a=1)")
    assert transform_spec.parse("x(a=1)") != transform_spec.parse("x(a=2)")
    assert issubclass(UsageError, GraphoptError)
