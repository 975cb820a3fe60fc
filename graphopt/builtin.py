"""graphopt's own passes, presets and commands, registered through the hooks any plugin uses.

Each pass module lists its classes in ``PASSES``; each command module has
``HELP``, ``configure(parser)`` and ``run(args, ctx)``. Adding a built-in is
adding its module name below.
"""

from __future__ import annotations

import importlib

from graphopt.hookspecs import hookimpl

PASS_MODULES = [
    "graphopt.passes.precision",
    "graphopt.passes.grappler",
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
    "bench": "graphopt.cli.commands.bench",
}

PRESETS = [
]


@hookimpl
def register_passes(register):
    for module_name in PASS_MODULES:
        for cls in importlib.import_module(module_name).PASSES:
            register(cls)


@hookimpl
def register_presets(register):
    for name, transforms, description, lossy in PRESETS:
        register(name, transforms, description, lossy=lossy)


@hookimpl
def register_commands(register):
    for name, module_name in COMMAND_MODULES.items():
        module = importlib.import_module(module_name)
        register(name, module.HELP, module.configure, module.run)


@hookimpl(trylast=True)
def graphopt_run_pass(pass_, model, context):
    # The default behaviour is itself a hook implementation, so wrappers from
    # plugins (timing, checks, replacements) compose around it.
    return pass_.run(model)
