"""Transform strings: GTT's syntax parsed into structured steps, errors that point at the fault."""

from __future__ import annotations

import pytest

from graphopt.errors import UsageError
from graphopt.passes import transform_string as transform_spec
from graphopt.passes.pipeline import Pipeline
from graphopt.passes.transform_string import GroupSpec, StepSpec, format_items, parse
from graphopt.plugins import Host


@pytest.fixture(scope="module")
def host():
    return Host.create(plugins=False)


def test_gtt_string_parses_into_steps_with_arguments_in_order():
    items = parse('strip_unused_nodes(type=float, shape="1,299,299,3") remove_nodes(op=Identity, op=CheckNumerics) '
                  "fold_constants(ignore_errors=true)  fold_batch_norms")
    assert items == [
        StepSpec("strip_unused_nodes", (("type", "float"), ("shape", "1,299,299,3"))),
        StepSpec("remove_nodes", (("op", "Identity"), ("op", "CheckNumerics"))),
        StepSpec("fold_constants", (("ignore_errors", "true"),)),
        StepSpec("fold_batch_norms"),
    ]
    # Repeated keys become a list, single ones stay a string.
    assert items[1].options() == {"op": ["Identity", "CheckNumerics"]}
    assert items[0].options() == {"type": "float", "shape": "1,299,299,3"}
    assert items[1].position == items[0].position + len('strip_unused_nodes(type=float, shape="1,299,299,3") ')


def test_quoted_values_keep_commas_parentheses_spaces_and_escaped_quotes():
    (step,) = parse(r'set_device(device="/job:a/device:CPU:0", note="a, b (c) \"d\" \\e", empty="")')
    assert step.options() == {"device": "/job:a/device:CPU:0", "note": 'a, b (c) "d" \\e', "empty": ""}


def test_repeat_groups_nest_and_default_to_ten():
    items = parse("fold_constants { remove_nodes(op=Identity) { merge_duplicate_nodes }*3 }*5 {a}")
    assert items[1] == GroupSpec((StepSpec("remove_nodes", (("op", "Identity"),)),
                                  GroupSpec((StepSpec("merge_duplicate_nodes"),), 3)), 5)
    assert items[2].max_iterations == transform_spec.DEFAULT_REPEAT


@pytest.mark.parametrize("text", [
    "",
    "a",
    'a(k=v, k=w) b(x="1,2,3") { c d(e=f) }*4',
    'a(path="/tmp/x y/z.pb", q="say \\"hi\\"")',
    "{ { a }*2 b }*3",
])
def test_format_then_parse_round_trips(text):
    items = parse(text)
    assert parse(format_items(items)) == items
    assert format_items(parse(format_items(items))) == format_items(items)


@pytest.mark.parametrize("text, pos, fragment", [
    ("a(k=v", 5, "missing ')'"),
    ("a(k)", 3, "expected '='"),
    ("a(=v)", 2, "argument name"),
    ('a(k="v)', 4, "unbalanced quote"),
    ("a(k=)", 4, "empty value"),
    ("a, b", 1, "unexpected ','"),
    ("{ a", 3, "missing '}'"),
    ("a }", 2, "unexpected '}'"),
    ("{ }", 0, "empty group"),
    ("{ a }*0", 6, "repeat count"),
    ("{ a }*x", 6, "repeat count"),
    ("a(k=v)b", 6, "unexpected 'b'"),
    ("a(k=v w=x)", 6, "unexpected 'w'"),
    ("é", 0, "transform name"),
])
def test_malformed_strings_point_at_the_position(text, pos, fragment):
    with pytest.raises(UsageError) as info:
        parse(text)
    err = info.value
    if fragment:
        assert fragment in err.message
    assert "position" in err.message
    # The caret sits under the reported position.
    shown, caret = err.details
    reported = int(err.message.rsplit("position ", 1)[1])
    assert caret.index("^") - 2 == reported
    if fragment:
        assert reported == pos


def test_only_usage_errors_escape_for_odd_input():
    for text in ["{" * 100 + "a" + "}" * 100, "(" * 50, "a(" + "k=v," * 1000, "\x00", "a\n(\tk = v )", 42, None]:
        try:
            parse(text)
        except UsageError:
            pass
    assert parse("a(\tk = v )\n") == [StepSpec("a", (("k", "v"),))]


def test_unknown_pass_names_the_closest_known_and_points_at_it(host):
    with pytest.raises(UsageError) as info:
        Pipeline.parse("strip_unused_nodes fold_constant(ignore_errors=true)", host=host)
    err = info.value
    assert "fold_constant" in err.message and "'fold_constants'" in err.hint
    assert err.details[1].index("^") - 2 == len("strip_unused_nodes ")


def test_presets_are_usable_by_name_and_expand_to_their_passes(host):
    seed = Pipeline.parse("gtt-seed", host=host)
    assert seed.spec == Pipeline.parse(host.registry.presets["gtt-seed"].transforms, host=host).spec
    assert [p.name for p in seed.passes()][:2] == ["remove_attribute", "remove_nodes"]
    with pytest.raises(UsageError, match="takes no arguments"):
        Pipeline.parse("gtt-seed(x=1)", host=host)
