"""graphopt's own passes, presets and commands, registered through the hooks any plugin uses.

Each pass module lists its classes in ``PASSES``; each command module has
``HELP``, ``configure(parser)`` and ``run(args, ctx)``. Adding a built-in is
adding its module name below.
"""

from __future__ import annotations

import importlib

from graphopt.hookspecs import hookimpl

PASS_MODULES = [
    "graphopt.passes.batch_norm",
    "graphopt.passes.debug_ops",
    "graphopt.passes.pad_conv",
    "graphopt.passes.precision",
    "graphopt.passes.grappler",
    "graphopt.passes.inline",
    "graphopt.passes.atrous",
    "graphopt.passes.grouped_conv",
    "graphopt.passes.shapes",
]

COMMAND_MODULES = {
    "passes": "graphopt.cli.commands.passes",
    "plugins": "graphopt.cli.commands.plugins",
    "optimize": "graphopt.cli.commands.optimize",
    "demo": "graphopt.cli.commands.demo",
    "serve": "graphopt.cli.commands.serve",
    "predict": "graphopt.cli.commands.predict",
    "serving-config": "graphopt.cli.commands.serving_config",
    "inspect": "graphopt.cli.commands.inspect",
    "diff": "graphopt.cli.commands.diff",
    "explain": "graphopt.cli.commands.explain",
    "bench": "graphopt.cli.commands.bench",
    "tune": "graphopt.cli.commands.tune",
    "fleet": "graphopt.cli.commands.fleet",
}

# inline_functions first: the other passes and Grappler see inside calls Keras compiles with XLA (grouped convs).
SERVING_STEPS = ("inline_functions strip_debug_ops remove_attribute(attribute_name=_class, ignore_errors=true) "
                 "strip_unused_nodes(ignore_errors=true) fold_constants(ignore_errors=true) fold_all_batch_norms "
                 "merge_duplicate_nodes(ignore_errors=true) grappler_optimize")

PRESETS = [
    # Lossless default of `graphopt optimize`: GTT where it works (rolled back where it fails, e.g. on
    # function libraries), graphopt's passes where GTT falls short (CheckNumerics, BN after depthwise /
    # BiasAdd / V3), then Grappler for the serving CPU so TF Serving can run with runtime Grappler off.
    ("serving", SERVING_STEPS,
     "Lossless: inline calls (XLA-compiled ones too), strip debug ops, GTT cleanup and folding, fold every batch "
     "norm, Grappler pre-optimized for CPU.",
     False),
    ("serving-onednn", SERVING_STEPS.replace("grappler_optimize", "grappler_optimize(onednn=on)"),
     "serving, with oneDNN-only fusions (depthwise conv, residual add) for servers that run "
     "TF_ENABLE_ONEDNN_OPTS=1; fails where oneDNN is off.", False),
    # For the runtime targets other than TF Serving (graphopt.targets: openvino, onnx): grappler_optimize's fused
    # kernels (_FusedConv2D...) exist only in TensorFlow, and those runtimes fuse for their own kernels.
    ("serving-portable", SERVING_STEPS.replace(" grappler_optimize", ""),
     "serving without grappler_optimize: every lossless fold, no TensorFlow-only kernels (the default of the "
     "openvino and onnx targets).", False),
    # Weight passes go last: Grappler would fold their Casts back into float32 constants.
    ("serving-fp16", "serving weights_to_fp16",
     "serving, then float32 weights stored as float16 (half the size; serve with runtime constant folding).", True),
    ("serving-int8", "serving weights_to_int8",
     "serving, then weights stored as int8 with per-channel scales (a quarter of the size; "
     "serve with runtime constant folding).", True),
]


@hookimpl
def graphopt_register_passes(register):
    for module_name in PASS_MODULES:
        for cls in importlib.import_module(module_name).PASSES:
            register(cls)


@hookimpl
def graphopt_register_presets(register):
    for name, transforms, description, lossy in PRESETS:
        register(name, transforms, description, lossy=lossy)


@hookimpl
def graphopt_register_targets(register):
    # TF Serving is a target like any plugin's (graphopt/targets/tfserving.py), and the default one.
    from graphopt.targets.tfserving import TFServingTarget

    register(TFServingTarget)


@hookimpl
def graphopt_register_commands(register):
    for name, module_name in COMMAND_MODULES.items():
        module = importlib.import_module(module_name)
        register(name, module.HELP, module.configure, module.run)


@hookimpl(trylast=True)
def graphopt_run_pass(pass_, model, context):
    # The default behaviour is itself a hook implementation, so wrappers from
    # plugins (timing, checks, replacements) compose around it.
    return pass_.run(model)


@hookimpl(trylast=True)
def graphopt_run_pipeline(pipeline, model, context):
    # Like graphopt_run_pass: the default is a hook implementation so plugins can wrap a whole run.
    return pipeline.run_steps(model, context)
