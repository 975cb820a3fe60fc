"""graphopt fleet: every model version of a TF Serving models.config, re-optimized, verified, benchmarked, exported.

A small repository is built from a tiny Keras model: one model with two
versions (its policy serves the latest), one with a label, and one whose
SavedModel is broken. Real TensorFlow in real worker processes throughout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from models import keras_saved_model

from graphopt.errors import InputError, UsageError
from graphopt.serving.model_config import ServedModel, model_config_text, parse_model_config
from graphopt.tuning import TuneOptions
from graphopt.tuning.fleet import FLEET_DIR, fleet, read_config

FAST = dict(max_workers=3, warm_rungs=(2, 3), reps=2, warmup=1)


def write_repo(root: Path, model: Path) -> Path:
    for name, version in (("alpha", 1), ("alpha", 2), ("beta", 3)):
        shutil.copytree(model, root / name / str(version))
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "saved_model.pb").write_bytes(b"\x08\x01not a saved model")
    text = model_config_text([ServedModel("alpha", str(root / "alpha")),
                              ServedModel("beta", str(root / "beta"), labels={"stable": 3}),
                              ServedModel("broken", "broken")])  # relative: resolved beside the config file
    (root / "models.config").write_text(text)
    return root / "models.config"


@pytest.fixture(scope="module")
def repo(model_path, tmp_path_factory):
    return write_repo(tmp_path_factory.mktemp("repo"), model_path("keras_saved_model", keras_saved_model))


@pytest.fixture(scope="module")
def ran(repo, tmp_path_factory):
    out = tmp_path_factory.mktemp("fleet") / "new"
    events: list[tuple[str, dict]] = []
    result = fleet(repo, out, options=TuneOptions(**FAST), on_event=lambda k, d: events.append((k, d)))
    return {"out": out, "result": result, "events": events}


def test_read_config_applies_version_policies(repo):
    _, entries = read_config(repo)
    by_name = {e.name: e for e in entries}
    assert by_name["alpha"].versions == [2]  # latest (num_versions 1) of 1, 2
    assert by_name["beta"].versions == [3]
    assert by_name["broken"].base_path == repo.parent / "broken"  # relative to the config file


def test_read_config_problems_are_per_model(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    text = model_config_text([ServedModel("m", str(tmp_path / "m"), versions=[1, 7]),
                              ServedModel("empty", str(tmp_path / "nothing"))])
    (tmp_path / "models.config").write_text(text)
    _, entries = read_config(tmp_path / "models.config")
    assert entries[0].versions == [1] and "7" in entries[0].problem
    assert entries[1].versions == [] and "no version" in entries[1].problem
    (tmp_path / "bad.config").write_text("model_config_list { config { nam: 'x' } }")
    with pytest.raises(InputError):
        read_config(tmp_path / "bad.config")


def test_every_model_handled_and_one_failure_stops_nothing(ran):
    jobs = {(j["model"], j["version"]): j for j in ran["result"].jobs}
    assert set(jobs) == {("alpha", 2), ("beta", 3), ("broken", 1)}
    assert jobs[("alpha", 2)]["status"] == "ok" and jobs[("beta", 3)]["status"] == "ok"
    assert jobs[("broken", 1)]["status"] == "failed"
    assert "saved_model" in json.dumps(jobs[("broken", 1)]["error"]).lower() or jobs[("broken", 1)]["error"]
    for key in (("alpha", 2), ("beta", 3)):
        j = jobs[key]
        new, served = j["new"], j["served"]
        assert new["verification"]["passed"] and new["label"].startswith("serving")
        assert new["ratio"] > 0 and new["median"] > 0 and served["median"] > 0  # measured against the served one
        assert new["disk_bytes"] and served["disk_bytes"]
        assert Path(j["exported"]) == ran["out"] / key[0] / str(key[1])


def test_new_versions_and_config(ran, repo):
    out = ran["out"]
    assert (out / "alpha" / "2" / "saved_model.pb").is_file()
    assert not (out / "alpha" / "1").exists()  # the policy does not serve it
    assert (out / "beta" / "3" / "assets.extra" / "platform_config.pbtxt").is_file()
    config = parse_model_config((out / "models.config").read_text())
    by_name = {c.name: c for c in config.model_config_list.config}
    assert by_name["alpha"].base_path == str(out / "alpha")
    assert by_name["beta"].base_path == str(out / "beta") and dict(by_name["beta"].version_labels) == {"stable": 3}
    assert by_name["broken"].base_path == str(repo.parent / "broken")  # still served from where it was
    assert by_name["alpha"].model_version_policy.WhichOneof("policy_choice") == "latest"
    assert (out / "platform_config.pbtxt").is_file() and (out / "session_config.pbtxt").is_file()
    assert any("broken" in n for n in ran["result"].notes)
    report = json.loads((out / FLEET_DIR / "fleet-report.json").read_text())
    assert report["counts"] == {"ok": 2, "failed": 1}


def test_rerun_skips_what_finished(ran, repo):
    before = (ran["out"] / FLEET_DIR / "fleet.jsonl").read_text().splitlines()
    again = fleet(repo, ran["out"], options=TuneOptions(**FAST))
    new = [json.loads(line) for line in (ran["out"] / FLEET_DIR / "fleet.jsonl").read_text().splitlines()[len(before):]]
    jobs = [(r["model"], r["version"]) for r in new if r["type"] == "job"]
    assert jobs == [("broken", 1)]  # only the failed one ran again
    assert {(j["model"], j["status"]) for j in again.jobs} == {("alpha", "ok"), ("beta", "ok"), ("broken", "failed")}


def test_cli_table_and_exit_code(ran, repo, cli):
    code, out, err = cli("fleet", repo, "--out", ran["out"], "--no-retry")
    assert code == 1  # a model failed: said by the exit code, after the report
    for word in ("alpha", "beta", "broken", "failed", "vs served"):
        assert word in out
    code, out, err = cli("fleet", repo, "--out", repo.parent / "alpha")
    assert code == 2 and "overlaps" in err


def test_tune_and_preset_are_exclusive(repo, tmp_path):
    with pytest.raises(UsageError):
        fleet(repo, tmp_path / "x", tune=True, preset="serving")
    with pytest.raises(UsageError):
        fleet(repo, tmp_path / "x", preset="no-such-preset")


def test_tune_mode_searches_each_model_with_the_server_wide_runtime(model_path, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(model_path("keras_saved_model", keras_saved_model), repo / "solo" / "1")
    (repo / "models.config").write_text(model_config_text([ServedModel("solo", str(repo / "solo"))]))
    result = fleet(repo / "models.config", tmp_path / "new", tune=True, pipelines=["serving", ""],
                   runtime_optimizer="off", options=TuneOptions(**FAST))
    (job,) = result.jobs
    assert result.mode == "tune" and result.runtime["optimizer"] == "off"
    report = json.loads(Path(job["tune_report"]).read_text())
    tried = {t["label"] for t in report["trials"]}
    assert {"serving | off", "no passes | off", "as exported"} <= tried  # both pipelines, pinned to the server's mode
    assert all(t["runtime"].get("optimizer") in (None, "off") for t in report["trials"] if t["status"] != "anchor")
    assert job["status"] in ("ok", "kept") and job["new"]["runtime"]["optimizer"] == "off"
    # A new version, or (nothing verified beat it) the served one copied as it is: the new base serves either way.
    assert (tmp_path / "new" / "solo" / "1" / "saved_model.pb").is_file()
    config = parse_model_config((tmp_path / "new" / "models.config").read_text())
    assert config.model_config_list.config[0].base_path == str(tmp_path / "new" / "solo")
