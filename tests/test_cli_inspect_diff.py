"""``graphopt inspect`` and ``graphopt diff`` through the CLI, and the rich views at 80 columns without colour."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from models import tf1_seed_graph
from rich.console import Console

from graphopt.analysis.diff import diff_models
from graphopt.cli.render import render_diff, render_inspect, render_report
from graphopt.passes.pipeline import Pipeline

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"
IO = ("--inputs", "x", "--outputs", "probs")


@pytest.fixture(scope="module")
def seed_result():
    model, facts = tf1_seed_graph()
    return model, facts, Pipeline.parse("gtt-seed").run(model)


@pytest.fixture(scope="module")
def pb_pair(seed_result, tmp_path_factory):
    model, facts, result = seed_result
    d = tmp_path_factory.mktemp("pb")
    (d / "before.pb").write_bytes(model.graph_def.SerializeToString())
    (d / "after.pb").write_bytes(result.model.graph_def.SerializeToString())
    return d / "before.pb", d / "after.pb", facts


def _console(width=80):
    buf = io.StringIO()
    return Console(file=buf, width=width, color_system=None), buf


def _assert_fits(text: str, width: int = 80) -> None:
    assert max(len(line) for line in text.splitlines()) <= width


def test_inspect_json_has_the_issue_keys_and_validates(cli, pb_pair):
    jsonschema = pytest.importorskip("jsonschema")
    before, _, facts = pb_pair
    code, out, err = cli("inspect", before, "--json", *IO)
    assert code == 0, err
    data = json.loads(out)
    for key in ("nodes", "ops", "size_bytes", "const_bytes", "inputs", "outputs"):
        assert key in data
    assert data["nodes"] == 37 and data["ops"]["Identity"] == 4
    assert data["size_bytes"] == before.stat().st_size
    assert [t["name"] for t in data["inputs"]] == ["x:0"] and [t["name"] for t in data["outputs"]] == ["probs:0"]
    assert set(facts["train"]) <= set(data["unreachable"])
    jsonschema.validate(data, json.loads((SCHEMAS / "inspect.schema.json").read_text()))


def test_inspect_rich_view(cli, pb_pair):
    before, _, _ = pb_pair
    code, out, err = cli("inspect", before, *IO)
    assert code == 0, err
    assert "37 nodes" in out and "cyclic" in out
    assert "Identity" in out and "█" in out  # histogram bars
    assert "largest constants" in out and "w1" in out
    assert "8 nodes unreachable from the outputs" in out and "train/loss" in out


def test_diff_json_lists_the_seed_removals(cli, pb_pair):
    jsonschema = pytest.importorskip("jsonschema")
    before, after, facts = pb_pair
    code, out, err = cli("diff", before, after, "--json", *IO)
    assert code == 0, err
    data = json.loads(out)
    jsonschema.validate(data, json.loads((SCHEMAS / "diff.schema.json").read_text()))
    removed = {n["name"] for n in data["removed"]}
    assert set(facts["train"]) <= removed
    assert set(facts["identity_reads"]) | set(facts["check_numerics"]) <= removed
    assert data["added"] == [] and data["summary"]["removed"] == len(removed)
    assert data["a"]["label"] == str(before)


def test_diff_rich_view_and_exit_code(cli, pb_pair):
    before, after, _ = pb_pair
    code, out, err = cli("diff", before, after, *IO)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("-13 removed, +0 added, ~8 changed (=16) · 37→24 nodes")  # the summary first
    assert lines[1] == f"A: {before}"
    assert "changed neighbourhoods" in out and "- train/loss (Mean)" in out
    assert cli("diff", before, after, "--exit-code", *IO)[0] == 1
    assert cli("diff", before, before, "--exit-code", *IO)[0] == 0


def test_diff_of_a_missing_model_is_an_input_error(cli, pb_pair, tmp_path):
    before, _, _ = pb_pair
    code, out, err = cli("diff", before, tmp_path / "nope.pb")
    assert code == 3 and "does not exist" in err and out == ""


def test_render_report_fits_80_columns_without_colour(seed_result):
    _, _, result = seed_result
    console, buf = _console()
    render_report(console, result)
    text = buf.getvalue()
    _assert_fits(text)
    for rec in result.records:
        assert rec.name[:12] in text
    assert "-4 Identity" in text and "unchanged" in text
    assert text.splitlines()[-1].startswith("total: nodes 37 → 24")
    assert "\x1b[" not in text


def test_render_diff_and_inspect_fit_80_columns(seed_result):
    from graphopt.analysis.stats import analyze

    model, _, result = seed_result
    for render, data in ((render_diff, diff_models(model, result.model)), (render_inspect, analyze(model))):
        console, buf = _console()
        render(console, data)
        _assert_fits(buf.getvalue())
        assert "\x1b[" not in buf.getvalue()


def test_render_diff_of_identical_graphs(seed_result):
    model, _, _ = seed_result
    console, buf = _console()
    render_diff(console, diff_models(model, model))
    assert "identical" in buf.getvalue()


def test_inspect_a_tf2_saved_model_with_functional_control_flow(cli, model_path):
    from models import control_flow_saved_model

    path = model_path("control_flow_sm", control_flow_saved_model)
    code, out, err = cli("inspect", path, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["format"] == "saved_model" and data["signature"]["key"] == "serving_default"
    assert {t["key"] for t in data["outputs"]} == {"y", "total"}
    assert data["num_functions"] >= 2 and all(n > 0 for n in data["functions"].values())  # While cond/body, If
    assert data["parameter_count"] >= 16 + 1  # w [4,4] and scale, frozen into constants
    code, out, err = cli("inspect", path)
    assert code == 0 and "functions (" in out


def test_diff_two_signatures_of_a_tf1_saved_model(cli, model_path):
    from models import tf1_saved_model

    path = model_path("tf1_sm", tf1_saved_model)
    code, out, err = cli("diff", path, path, "--json", "--tags", "custom,cpu", "--signature", "scores",
                         "--b-tags", "custom,cpu", "--b-signature", "logits")
    assert code == 0, err
    data = json.loads(out)
    assert data["summary"]["nodes_delta"] == data["b"]["nodes"] - data["a"]["nodes"]
    code, out, err = cli("diff", path, path, "--json", "--tags", "custom,cpu", "--signature", "scores")
    assert code == 0, err
    data = json.loads(out)
    summary = data["summary"]
    # Same model, same signature, loaded twice: identical, lookup tables included (their
    # exported keys are sorted and their shared_name derives from the contents).
    assert summary["added"] == summary["removed"] == summary["changed"] == 0 and summary["nodes_delta"] == 0


def test_render_report_shows_rolled_back_and_counters(seed_result):
    from graphopt.passes.base import PassResult, function_pass
    from graphopt.passes.pipeline import Pipeline

    model, _, _ = seed_result

    @function_pass(name="explode", description="always fails")
    def explode(m):
        raise RuntimeError("boom")

    @function_pass(name="count_only", description="changes nothing, counts")
    def count_only(m):
        return PassResult(m, modified=False, counters={"looked_at": len(m.graph_def.node), "zero": 0})

    result = Pipeline([explode(), count_only(), "remove_nodes(op=CheckNumerics)"]).run(model, keep_going=True)
    console, buf = _console()
    render_report(console, result)
    text = buf.getvalue()
    _assert_fits(text)
    assert "↺ explode" in text and "rolled back" in text and "boom" in text
    assert "looked_at=37" in text and "zero=" not in text
    assert "-1 CheckNumerics" in text


def test_views_degrade_to_ascii_on_non_utf8_terminals(seed_result):
    from graphopt.analysis.stats import analyze

    class AsciiIO(io.StringIO):
        encoding = "ascii"

    model, _, result = seed_result
    for render, data in ((render_diff, diff_models(model, result.model)), (render_inspect, analyze(model)),
                         (render_report, result)):
        buf = AsciiIO()
        render(Console(file=buf, width=80, color_system=None), data)
        text = buf.getvalue()
        text.encode("ascii")  # raises if a glyph slipped through
        assert text.strip()
    assert "#" in text or "->" in text
