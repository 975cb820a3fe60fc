"""Runtime targets (graphopt.targets): the interface, the built-in tfserving target, and the shared flow.

A third-party target is registered here the way a plugin registers one (a module with a
``graphopt_register_targets`` hook, given to ``Host.create(extra=...)``): ``pbfile`` writes the
frozen graph as ``model.pb`` and runs it with TensorFlow, so the flow (convert, manifest,
verify against the original before anything is written, atomic move, base files) is tested
without any other runtime. OpenVINO and ONNX have their own tests in plugins/*/tests.
"""

from __future__ import annotations

import json
import os
import re
import types
from pathlib import Path

import models
import numpy as np
import pytest

from graphopt.errors import InputError, OutputError, UsageError, VerificationError
from graphopt.hookspecs import hookimpl
from graphopt.model import Model
from graphopt.plugins import Host
from graphopt.runtime.session import Session, random_inputs, run_model
from graphopt.targets.base import (
    F32,
    MANIFEST_FILE,
    Manifest,
    Precision,
    Runner,
    Target,
    create_target,
    open_export,
    portable_graph_def,
    refuse_tables_and_strings,
    target_of,
    version_dir_of,
)


class _SessionRunner(Runner):
    def __init__(self, model: Model, noise: float) -> None:
        super().__init__(model.signature, f"pbfile (TensorFlow, noise {noise}, pid {os.getpid()})")
        self.session, self.noise = Session(model), noise

    def run(self, feeds):
        out = self.session.run(feeds)
        return {k: v + self.noise if v.dtype.kind == "f" else v for k, v in out.items()}

    def close(self):
        self.session.close()


class PbTarget(Target):
    """A frozen GraphDef in ``model.pb``; precision ``noisy`` adds 1e-2 to every float output (and claims 1e-6)."""

    name = "pbfile"
    description = "a frozen GraphDef for a test server"
    server = "the test server"
    runtime_modules = ("tensorflow",)
    precisions = {"f32": F32, "noisy": Precision("noisy", "adds noise", lossy=True, tolerance=1e-6)}

    def check(self, model):
        refuse_tables_and_strings(self.name, model)

    def convert(self, model, out_dir, *, samples=None):
        (Path(out_dir) / "model.pb").write_bytes(model.graph_def.SerializeToString())
        return ["model.pb"]

    def open(self, version_dir, *, settings=None):
        from tensorflow.core.framework.graph_pb2 import GraphDef

        manifest = Manifest.read(version_dir)
        graph_def = GraphDef.FromString((Path(version_dir) / "model.pb").read_bytes())
        return _SessionRunner(Model(graph_def, manifest.sig), 1e-2 if self.precision == "noisy" else 0.0)

    @classmethod
    def owns(cls, version_dir):
        return (Path(version_dir) / "model.pb").is_file()

    def server_files(self, models, *, settings=None):
        return {"pbfile.json": json.dumps([{"name": m.name, "base": m.base_path} for m in models])}

    def base_files(self, name, version_dir, manifest):
        return {"pbfile.cfg": f"name: {name}\nprecision: {manifest.precision}\n"}


@hookimpl
def graphopt_register_targets(register):
    register(PbTarget)


_PLUGIN = types.ModuleType("graphopt_pbfile_test")
_PLUGIN.graphopt_register_targets = graphopt_register_targets


@pytest.fixture(scope="module")
def host():
    return Host.create(plugins=True, allow=["pbfile"], extra=[("pbfile", _PLUGIN)])


@pytest.fixture(scope="module")
def keras_src(model_path):
    return model_path("keras_export", models.keras_saved_model)


def _no_leftovers(base: Path) -> None:
    """Nothing at all under (or as) BASE: no version, no hidden staging folder, no lock file."""
    assert not base.exists() or not any(base.iterdir()), sorted(p.name for p in base.iterdir())


# --- registration -------------------------------------------------------------------------------------------


def test_tfserving_is_the_builtin_default_target_registered_through_the_hook():
    registry = Host.create(plugins=False).registry
    info = registry.targets["tfserving"]
    assert info.origin.kind == "builtin" and info.origin.plugin == "graphopt.builtin"
    target = create_target(host=Host.create(plugins=False))
    assert target.name == "tfserving" and target.precision == "f32" and not target.precision_info.lossy


def test_a_plugins_target_is_registered_like_a_pass_and_clashes_are_refused(host):
    assert host.registry.targets["pbfile"].origin.kind == "plugin"
    clash = types.ModuleType("graphopt_clash")

    @hookimpl
    def graphopt_register_targets(register):
        from graphopt.targets.tfserving import TFServingTarget

        register(TFServingTarget)

    clash.graphopt_register_targets = graphopt_register_targets
    registry = Host.create(plugins=True, allow=["clash"], extra=[("clash", clash)]).registry
    assert any("target 'tfserving' is registered twice" in f.error for f in registry.failures)
    assert registry.targets["tfserving"].origin.kind == "builtin"


def test_unknown_target_and_precision_are_usage_errors(host):
    with pytest.raises(UsageError, match="unknown target 'pbfil'") as info:
        create_target("pbfil", host=host)
    assert "pbfile" in info.value.hint
    with pytest.raises(UsageError, match="no precision 'bf16'") as info:
        create_target("pbfile", "bf16", host=host)
    assert "f32, noisy" in info.value.hint


# --- the built-in target: today's behaviour --------------------------------------------------------------


def test_default_target_writes_the_tf_serving_layout_as_before(keras_src, tmp_path):
    import graphopt

    base = tmp_path / "tf"
    result = graphopt.optimize(keras_src, serving_dir=base)
    version = base / "1"
    assert (version / "saved_model.pb").is_file() and not (version / MANIFEST_FILE).exists()
    extra = sorted(p.name for p in (version / "assets.extra").iterdir())
    assert extra == ["platform_config.pbtxt", "session_config.pbtxt", "tf_serving_warmup_requests"]
    assert result.target.target == "tfserving" and result.target.path == version
    assert result.target.verification is None  # TF runs the graph optimize verified: no second comparison
    assert target_of(version) == "tfserving" and version_dir_of(base) == version
    feeds = random_inputs(result.model.signature, batch=2, seed=1)
    with open_export(base) as runner:
        assert "runtime Grappler off (shipped)" in runner.description
        got = runner.run(feeds)
    np.testing.assert_allclose(got["output_0"], run_model(result.model, feeds)["output_0"], rtol=1e-6)


def test_text_model_is_served_by_tfserving_and_refused_by_another_target_naming_the_op(model_path, tmp_path, host):
    import graphopt

    src = model_path("string_lookup", models.string_lookup_saved_model)
    base = tmp_path / "pb"
    with pytest.raises(InputError, match="target 'pbfile' cannot convert op .*LookupTableFindV2") as info:
        graphopt.optimize(src, serving_dir=base, target="pbfile", host=host)
    assert "lookup tables" in info.value.message and "tfserving" in info.value.hint
    _no_leftovers(base)
    result = graphopt.optimize(src, serving_dir=tmp_path / "tf", host=host)
    expected = np.load(str(src) + ".expected.npz")
    with open_export(tmp_path / "tf", host=host) as runner:
        got = runner.run({"words": expected["words"]})
    np.testing.assert_allclose(got["output_0"], expected["expected"], rtol=1e-5, atol=1e-6)
    assert result.target.target == "tfserving"


# --- the shared flow, through a plugin's target ------------------------------------------------------------


def test_plugin_target_converts_verifies_and_writes_its_layout(keras_src, tmp_path, host):
    import graphopt

    base = tmp_path / "pb"
    shown = []
    result = graphopt.optimize(keras_src, serving_dir=base, target="pbfile", host=host, on_target_verified=shown.append)
    version = base / "1"
    assert sorted(p.name for p in version.iterdir()) == ["assets.extra", MANIFEST_FILE, "model.pb"]
    assert (base / "pbfile.cfg").read_text() == "name: pb\nprecision: f32\n"
    manifest = Manifest.read(version)
    assert manifest.target == "pbfile" and manifest.files == ["model.pb"]
    assert manifest.sig == result.model.signature
    report = result.target.verification
    assert shown == [report] and report.passed and report.max_rel == 0
    runtime = next(n for n in report.notes if n.startswith("runtime: pbfile"))
    assert int(re.search(r"pid (\d+)", runtime).group(1)) != os.getpid()  # the converted model ran confined
    assert result.to_dict()["target"]["path"] == str(version)
    assert target_of(version, host) == "pbfile"
    feeds = random_inputs(result.model.signature, batch=3, seed=2)
    with open_export(base, host=host) as runner:
        np.testing.assert_allclose(runner.run(feeds)["output_0"], run_model(result.model, feeds)["output_0"],
                                   rtol=1e-6)


def test_target_verification_failure_writes_nothing(keras_src, tmp_path, host):
    import graphopt

    base = tmp_path / "noisy"
    with pytest.raises(VerificationError, match="differ from the original") as info:
        graphopt.optimize(keras_src, serving_dir=base, target="pbfile", precision="noisy", host=host)
    assert any("target pbfile precision noisy" in d for d in info.value.details)
    _no_leftovers(base)
    assert not base.exists()  # the folders made for the output went too


def test_lossy_precision_declares_its_tolerance_and_an_explicit_one_wins(host):
    noisy = create_target("pbfile", "noisy", host=host)
    tol = noisy.tolerance()
    assert tol.rtol == pytest.approx(1e-4) and "precision noisy" in tol.source  # max(declared, the 1e-4 floor)
    assert noisy.tolerance(given=0.5).rtol == 0.5
    assert create_target("pbfile", host=host).tolerance().source == "lossless default"


def test_target_export_api_is_atomic_and_refuses_a_base_of_another_target(keras_src, tmp_path, host):
    import graphopt

    base = tmp_path / "m"
    graphopt.optimize(keras_src, serving_dir=base)  # a TF Serving version 1
    model = graphopt.load(keras_src)
    with pytest.raises(OutputError, match="holds versions for target 'tfserving'"):
        create_target("pbfile", host=host).export(model, base)
    assert sorted(p.name for p in base.iterdir()) == ["1"]
    other = tmp_path / "other"
    done = create_target("pbfile", host=host).export(model, other, version=4)
    assert done.path == other / "4" and (other / "pbfile.cfg").is_file() and done.verification is None
    with pytest.raises(OutputError, match="already exists"):
        create_target("pbfile", host=host).export(model, other, version=4)
    create_target("pbfile", host=host).export(model, other, version=4, force=True)  # a target's version is replaceable
    assert sorted(p.name for p in other.iterdir()) == ["4", "pbfile.cfg"]


def test_portable_graph_def_drops_hint_attrs_everywhere_and_computes_the_same():
    g_model = models.tf2_function_model()
    gd = g_model.graph_def
    gd.node[0].attr["_input_shapes"].list.shape.add()
    gd.library.function[0].node_def[0].attr["_grappler_hint"].b = True
    portable = portable_graph_def(gd)
    nodes = list(portable.node) + [n for f in portable.library.function for n in f.node_def]
    assert not [a for n in nodes for a in n.attr if a.startswith("_")]
    assert "_input_shapes" in gd.node[0].attr  # the original is untouched
    feeds = random_inputs(g_model.signature, batch=2)
    np.testing.assert_array_equal(run_model(g_model, feeds)["y"],
                                  run_model(g_model.replace(graph_def=portable), feeds)["y"])


# --- CLI --------------------------------------------------------------------------------------------------


def test_cli_target_needs_a_serving_dir_and_a_known_name(keras_src, tmp_path, cli):
    code, _, err = cli("optimize", keras_src, "-o", tmp_path / "o", "--target", "openvino-nope")
    assert code == 2 and "unknown target 'openvino-nope'" in err
    code, _, err = cli("serving-config", "--target", "nope", "--model", "m=/models/m", "-o", tmp_path / "cfg")
    assert code == 2 and "unknown target 'nope'" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "cfg").exists()


def test_bench_exports_times_each_runtime_in_a_worker_of_its_own(keras_src, tmp_path, cli):
    import graphopt

    graphopt.optimize(keras_src, serving_dir=tmp_path / "tf")
    code, out, err = cli("bench", keras_src, tmp_path / "tf", "--runs", "2", "--rounds", "2", "--warmup", "1",
                         "--json")
    assert code == 0, err
    data = json.loads(out)
    first, export = data["models"]
    assert (first["target"], export["target"]) == ("tfserving", "tfserving")
    assert "runtime Grappler full" in first["runtime"] and "runtime Grappler off (shipped)" in export["runtime"]
    assert export["max_rel"] <= 1e-5 and first["round_ratio"] == 1.0
    for m in (first, export):
        assert m["median_ms"] > 0 and m["load_s"] > 0 and m["first_run_s"] > 0 and m["disk_bytes"] > 0
    assert data["rounds"] == 2 and data["runs"] == 2
