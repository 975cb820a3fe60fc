"""graphopt tune: the search space, the pruning rule, the trial log, and real searches on a tiny Keras model.

The searches run real TensorFlow in real worker processes (builds, verification,
benchmark heats); their spaces and rungs are cut down so each takes a minute or
two. Timing figures are never asserted (benchmarks/tune.py measures); what is
asserted is what the search did: what was built, verified, pruned, exported,
kept across an interruption and reused on a rerun.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from models import keras_saved_model

from graphopt.errors import UsageError
from graphopt.plugins import Host
from graphopt.tuning import TuneInterrupted, TuneOptions, build_space, race, tune
from graphopt.tuning.log import TrialLog, fingerprint
from graphopt.tuning.space import TFSERVING, Build, Candidate, expand

FAST = dict(max_workers=3, warm_rungs=(2, 3), reps=2, warmup=1)


def records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "trials.jsonl").read_text().splitlines() if line.strip()]


# --- no TensorFlow run --------------------------------------------------------------------------------


def test_default_space_covers_presets_plugins_targets_and_runtime():
    host = Host.create()
    space = build_space(host)
    tf_pipelines = {b.pipeline for b in space.builds if b.target == TFSERVING}
    assert set(host.registry.presets) <= tf_pipelines  # every preset, plugin presets included
    assert "" in tf_pipelines  # no passes at all is a candidate too
    for name, info in host.registry.passes.items():
        if info.origin.kind == "plugin" and not any(o.required for o in info.cls.options.values()):
            assert any(p.endswith(" " + name) for p in tf_pipelines), name  # plugin passes are searched
    for name, info in host.registry.targets.items():  # targets are just another build dimension
        assert {b.precision for b in space.builds if b.target == name} == set(info.cls.precisions)
    dims = dict(space.runtime[TFSERVING])
    assert dims["optimizer"] == ["off", "remap", "constfold", "full"]
    assert [0, 0] in dims["threads"]


def test_space_rejects_typos_before_anything_runs():
    host = Host.create()
    with pytest.raises(UsageError, match="unknown target"):
        build_space(host, targets=["tfservng"])
    with pytest.raises(UsageError, match="runtime mode"):
        build_space(host, runtime_modes=["fast"])
    with pytest.raises(UsageError):
        build_space(host, pipelines=["servng"])


def test_candidate_ids_are_stable_and_expansion_changes_one_dimension():
    b = Build("serving")
    c = Candidate.make(b, {"optimizer": "remap", "intra_op": 0, "inter_op": 0})
    assert c.id == Candidate.from_dict(c.to_dict()).id  # a rerun finds its trials by id
    modes = expand(c, "optimizer", ["off", "remap", "full"])
    assert [m.settings["optimizer"] for m in modes] == ["off", "full"]
    assert all(m.build == b for m in modes)
    threads = expand(c, "threads", [[0, 0], [2, 1]])
    assert [(t.settings["intra_op"], t.settings["inter_op"]) for t in threads] == [(2, 1)]


def _fig(ratio: float, spread: float) -> race.Figure:
    return race.Figure(ratio=ratio, spread=spread, median=ratio * 10, p10=0, p90=0, anchor_median=10, rounds=3,
                       calls=9)


def test_prune_drops_only_what_the_noise_separates_then_halves():
    figures = {"a": _fig(0.50, 0.01), "b": _fig(0.52, 0.02), "c": _fig(0.80, 0.01), "d": _fig(0.51, 0.2)}
    survivors, pruned = race.prune(figures, cap=False)
    assert survivors == ["a", "d", "b"] and set(pruned) == {"c"}
    assert "clearly slower" in pruned["c"]
    # d is only 0.01 behind, and b is within a+b's noise: neither is dropped as slower; halving keeps 2 of 4.
    survivors, pruned = race.prune(figures)
    assert survivors == ["a", "d"] and "successive halving" in pruned["b"]
    assert set(race.tied(figures)) == {"a", "b", "d"}


def test_short_rungs_have_a_wider_floor_and_halving_keeps_two():
    assert race.floor_for(12, 12) == pytest.approx(race.NOISE_FLOOR)
    assert race.floor_for(3, 12) == pytest.approx(2 * race.NOISE_FLOOR)  # 1/sqrt(rounds): 3 rounds, twice the floor
    figures = {"a": _fig(0.50, 0.0), "b": _fig(0.545, 0.0), "c": _fig(0.555, 0.0)}
    # At the last rung's floor (3 %) b and c are clearly slower; after 3 of 12 rounds (6 %) they are not.
    assert race.prune(figures, cap=False)[0] == ["a"]
    assert race.prune(figures, cap=False, noise_floor=race.floor_for(3, 12))[0] == ["a", "b", "c"]
    survivors, pruned = race.prune(figures, noise_floor=race.floor_for(3, 12))
    assert survivors == ["a", "b"] and "successive halving" in pruned["c"]  # ceil(3/2) = 2, never fewer than two


def test_slower_than_the_anchor_is_not_exported():
    assert not race.slower_than_anchor(_fig(0.7, 0.01))
    assert not race.slower_than_anchor(_fig(1.02, 0.01))  # within the noise floor: as good as the original
    assert not race.slower_than_anchor(_fig(1.2, 0.25))  # within its own noise
    assert race.slower_than_anchor(_fig(1.2, 0.05))


def test_figure_is_the_median_of_per_round_ratios_to_the_anchor():
    anchor = {"times_ms": [[10, 10], [20, 20], [10, 10]]}
    member = {"times_ms": [[5, 5], [10, 10], [6, 6]]}  # round 2 was slowed for both: the ratio stays 0.5
    f = race.figure(member, anchor, "warm")
    assert f.ratio == pytest.approx(0.5) and f.rounds == 3 and f.calls == 6
    assert f.spread == pytest.approx((0.55 - 0.5) / 2)


def test_trial_log_survives_a_torn_last_line(tmp_path):
    log = TrialLog(tmp_path / "t.jsonl")
    log.append({"type": "build", "key": "b1", "status": "ok"})
    with (tmp_path / "t.jsonl").open("a") as f:
        f.write('{"type": "measure", "id": "c1", "ru')  # killed mid-write
    again = TrialLog(tmp_path / "t.jsonl")
    assert [r["type"] for r in again.records] == ["build"]
    again.append({"type": "done"})
    assert [r["type"] for r in TrialLog(tmp_path / "t.jsonl").records] == ["build", "done"]


def test_fingerprint_changes_with_the_model(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "saved_model.pb").write_bytes(b"1")
    before = fingerprint(tmp_path / "m")
    (tmp_path / "m" / "saved_model.pb").write_bytes(b"22")
    assert fingerprint(tmp_path / "m") != before


# --- real searches --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model(model_path):
    return model_path("keras_saved_model", keras_saved_model)


def _space():
    return build_space(Host.create(), pipelines=["serving", ""], targets=[TFSERVING], runtime_modes=["off", "full"],
                       threads=[(0, 0)])


@pytest.fixture(scope="module")
def tuned(small_model, tmp_path_factory):
    """One search stopped at its first finished benchmark heat (as Ctrl-C would), then rerun to the end."""
    out = tmp_path_factory.mktemp("tune") / "base"
    work = out / ".graphopt-tune"

    def ctrl_c_after_first_heat(kind, data):
        if kind == "heat_done":
            raise KeyboardInterrupt

    # export_if_slower: on a toy model the best variant may time slower than the original (noise), and
    # these tests are about what a search does, not about who wins (test_slower_than_the_anchor_is_not_exported).
    opts = TuneOptions(**FAST, export_if_slower=True)
    with pytest.raises(TuneInterrupted) as stopped:
        tune(small_model, out, options=opts, space=_space(), on_event=ctrl_c_after_first_heat)
    at_stop = records(work)
    events: list[str] = []
    result = tune(small_model, out, options=opts, space=_space(),
                  on_event=lambda kind, data: events.append(kind))
    return {"out": out, "work": work, "stopped": stopped.value.result, "at_stop": at_stop, "result": result,
            "events": events, "log": records(work)}


def test_interruption_keeps_what_finished(tuned):
    stopped, at_stop = tuned["stopped"], tuned["at_stop"]
    assert stopped.interrupted
    kinds = [r["type"] for r in at_stop]
    assert "reference" in kinds and kinds.count("build") == 2 and "measure" in kinds
    assert "export" not in kinds and "done" not in kinds
    assert {t.status for t in stopped.trials} & {"pruned", "finalist", "anchor"}  # the finished heat is reported


def test_rerun_resumes_from_the_log(tuned):
    log = tuned["log"]
    assert [r["type"] for r in log].count("reference") == 1  # the original ran once
    assert [r["type"] for r in log].count("build") == 2  # nothing rebuilt after the interruption
    first_heat = {r["id"] for r in tuned["at_stop"] if r["type"] == "measure"}
    remeasured = [r for r in log[len(tuned["at_stop"]):] if r["type"] == "measure" and r["id"] in first_heat
                  and r["rung"] == 0 and r["stage"] != "anchor"]
    assert remeasured == []  # the heat that finished before the interruption was not run again
    assert "build_done" not in tuned["events"]


def test_every_candidate_verified_and_reported(tuned):
    result = tuned["result"]
    report = json.loads(result.report.read_text())
    statuses = {t["status"] for t in report["trials"]}
    assert statuses <= {"winner", "finalist", "pruned", "anchor", "rejected", "failed", "not run"}
    assert report["winner"] and report["counts"]["winner"] == 1
    labels = [t["label"] for t in report["trials"]]
    assert "as exported" in labels and any(lbl.startswith("serving |") for lbl in labels)
    assert any(lbl.startswith("no passes |") for lbl in labels)
    # The runtime stage tried the other mode of the best builds: more candidates than builds.
    assert len([t for t in report["trials"] if t["stage"] == "optimizer"]) >= 1
    for t in report["trials"]:
        assert t["reason"], t
        if t["figure"] is not None:  # benchmarked: verified first, latency with its spread
            assert t["verification"]["passed"], t
            fig = t["figure"]
            assert fig["p10"] <= fig["median"] <= fig["p90"] and fig["ratio"] > 0 and fig["rounds"] >= 2
    anchor = next(t for t in report["trials"] if t["status"] == "anchor")
    assert anchor["figure"]["ratio"] == pytest.approx(1.0)


def test_winner_exported_with_the_config_it_was_measured_with(tuned):
    from google.protobuf import text_format
    from tensorflow.core.protobuf import config_pb2

    from graphopt.tuning.checks import check_outputs, load_reference, tolerance_from
    from graphopt.tuning.targets import adapter

    result = tuned["result"]
    assert result.exported == tuned["out"] / "1"
    assert (result.exported / "saved_model.pb").is_file()
    assert (result.exported / "assets.extra" / "tf_serving_warmup_requests").is_file()
    config = text_format.Parse((result.exported / "assets.extra" / "session_config.pbtxt").read_text(),
                               config_pb2.ConfigProto())
    mode = result.winner.candidate.settings["optimizer"]
    rewrite = config.graph_options.rewrite_options
    assert rewrite.disable_meta_optimizer == (mode == "off")
    if mode in ("remap", "constfold"):
        assert list(rewrite.optimizers) == [mode]
    assert (result.workdir / "server" / "models.config").is_file()
    assert (result.workdir / "server" / "platform_config.pbtxt").is_file()
    # What was exported answers like the original, run the way TF Serving runs it with the shipped settings.
    feeds, expected = load_reference(result.workdir / "reference.npz")
    runner = adapter(TFSERVING).open({"path": str(result.exported)}, result.winner.candidate.settings)
    try:
        got = runner.run(feeds)
    finally:
        runner.close()
    assert check_outputs(expected, got, tolerance_from(None))["passed"]
    assert set(got) == set(expected) and all(np.isfinite(v).all() for v in got.values())


def test_pareto_plot_is_svg_with_every_benchmarked_candidate(tuned):
    result = tuned["result"]
    root = ET.parse(result.plot).getroot()
    assert root.tag.endswith("svg")
    titles = [el.text for el in root.iter() if el.tag.endswith("title")]
    benchmarked = [t for t in result.trials if t.figure is not None]
    assert len(titles) == len(benchmarked)
    assert any(result.winner.candidate.label in t and "(winner)" in t for t in titles)


def test_a_finished_search_reruns_from_its_log_alone(tuned, small_model):
    before = records(tuned["work"])
    again = tune(small_model, tuned["out"], options=TuneOptions(**FAST, export_if_slower=True), space=_space())
    new = records(tuned["work"])[len(before):]
    assert {r["type"] for r in new} <= {"session", "done"}  # no build, no measurement, no export
    assert again.winner.candidate.id == tuned["result"].winner.candidate.id
    assert again.exported == tuned["result"].exported


def test_render_fits_the_terminal_and_says_why(tuned):
    from rich.console import Console

    from graphopt.cli.commands.tune import render_tune

    console = Console(record=True, width=80, color_system=None)
    render_tune(console, tuned["result"])
    text = console.export_text()
    assert "winner:" in text and "as exported" in text
    for t in tuned["result"].trials:
        assert t.reason[:40] in text.replace("\n", " ") or t.reason[:20] in text


def test_another_model_in_the_same_workdir_is_refused(tuned, small_model, tmp_path):
    import shutil

    shutil.copytree(small_model, tmp_path / "model")
    (tmp_path / "model" / "fingerprint.pb").write_bytes(b"changed")  # the same folder, another model
    shutil.copytree(tuned["work"], tmp_path / "w")
    with pytest.raises(UsageError, match="another model"):
        tune(tmp_path / "model", None, options=TuneOptions(**FAST), space=_space(), workdir=tmp_path / "w")


def test_failing_trials_are_isolated_and_reported(small_model, tmp_path):
    """A pass that leaves an unknown op fails its trial, one that changes outputs is rejected; the search goes on."""
    host = Host.create()
    space = build_space(host, pipelines=["rename_op(old_op_name=Relu, new_op_name=NoSuchOp)",
                                         "rename_op(old_op_name=Relu, new_op_name=Elu)", "serving"],
                        targets=[TFSERVING], fixed_runtime={"optimizer": "full", "intra_op": 0, "inter_op": 0})
    result = tune(small_model, tmp_path / "base", options=TuneOptions(**FAST, export_if_slower=True), space=space)
    by_pipeline = {t.candidate.build.pipeline: t for t in result.trials}
    failed = by_pipeline["rename_op(old_op_name=Relu, new_op_name=NoSuchOp)"]
    assert failed.status == "failed" and "NoSuchOp" in failed.reason
    rejected = by_pipeline["rename_op(old_op_name=Relu, new_op_name=Elu)"]
    assert rejected.status == "rejected" and "verification failed" in rejected.reason
    assert rejected.max_rel is not None and rejected.max_rel > 1e-4
    assert by_pipeline["serving"].status == "winner" and result.exported is not None


def test_budget_is_soft_and_still_answers(small_model, tmp_path):
    space = build_space(Host.create(), pipelines=["serving", "", "gtt-seed"], targets=[TFSERVING],
                        fixed_runtime={"optimizer": "full", "intra_op": 0, "inter_op": 0})
    result = tune(small_model, tmp_path / "base", options=TuneOptions(**FAST, budget_minutes=0.001,
                                                                       export_if_slower=True), space=space)
    not_run = [t for t in result.trials if t.status == "not run"]
    assert not_run and all("budget" in t.reason for t in not_run)
    assert result.winner is not None and result.winner.figure is not None  # one verified, measured answer
    assert any("budget" in n for n in result.notes)


def test_heat_isolates_a_worker_that_cannot_load(tuned):
    from graphopt.tuning.workers import run_heat

    work = tuned["work"]
    ref = next(r for r in tuned["log"] if r["type"] == "reference")
    heat = {"workdir": str(work), "reference": str(work / "reference.npz"), "tolerance": None, "mode": "warm",
            "rounds": 2, "reps": 1, "warmup": 0, "members": [
                {"id": "anchor", "target": TFSERVING, "spec": ref["baseline_spec"], "runtime": {"optimizer": "full"}},
                {"id": "broken", "target": TFSERVING, "spec": {"path": str(work / "no-such-model")},
                 "runtime": {"optimizer": "full"}}]}
    out = run_heat(heat)
    assert out["members"]["broken"]["status"] == "failed"
    assert "no-such-model" in json.dumps(out["members"]["broken"]["error"])
    assert out["members"]["anchor"]["status"] == "ok" and len(out["members"]["anchor"]["times_ms"]) == 2


def test_cli_usage_errors(cli, small_model, tmp_path):
    code, _, err = cli("tune", small_model, "--out", tmp_path / "b", "--threads", "two")
    assert code == 2 and "thread pair" in err
    code, _, err = cli("tune", small_model, "--out", small_model / "x")
    assert code == 2 and "overlaps" in err


def test_frozen_graph_source_is_measured_against_itself_frozen(model_path, tmp_path):
    """A .pb is not what TF Serving loads: the anchor is the frozen model with no pass, exported and served."""
    from models import frozen_graph

    src = model_path("frozen.pb", frozen_graph)
    space = build_space(Host.create(), pipelines=["serving"], targets=[TFSERVING],
                        fixed_runtime={"optimizer": "full", "intra_op": 0, "inter_op": 0})
    result = tune(src, tmp_path / "base", options=TuneOptions(**FAST, inputs=["input"], outputs=["prob", "peak"],
                                                               export_if_slower=True), space=space)
    assert result.anchor is not None and result.anchor.candidate.label.startswith("no passes")
    assert not result.anchor.candidate.baseline and result.anchor.figure.ratio == pytest.approx(1.0)
    assert result.winner is not None and (result.exported / "saved_model.pb").is_file()
    assert {t.candidate.build.pipeline for t in result.trials} == {"", "serving"}


def test_an_export_tf_serving_cannot_open_is_measured_frozen_instead(model_path, tmp_path):
    """A SavedModel without the 'serve' tag loads in graphopt (--tags) but not in TF Serving: the yardstick falls
    back to the frozen model with no pass, and the report says so."""
    from models import tf1_saved_model

    src = model_path("tf1_saved_model", tf1_saved_model)
    space = build_space(Host.create(), pipelines=["serving"], targets=[TFSERVING],
                        fixed_runtime={"optimizer": "full", "intra_op": 0, "inter_op": 0})
    result = tune(src, tmp_path / "base", options=TuneOptions(**FAST, signature="logits", tags=["custom", "cpu"],
                                                               export_if_slower=True), space=space)
    assert any("could not be benchmarked" in n for n in result.notes), result.notes
    assert not result.anchor.candidate.baseline and result.anchor.candidate.label.startswith("no passes")
    assert result.winner is not None and result.winner.verification["passed"]
    log = records(result.workdir)
    assert [r["type"] for r in log].count("anchor_failed") == 1
