"""The ``lakefill`` commands: one module each, registered here in the order ``lakefill --help``
lists them. A command module has ``register(sub)``, which adds its parser (through
``_common.add_parser``) and sets ``func`` to the function that runs it (``passthrough=True``
when it takes the engines' own options, as ``run`` does). A new command is a new module and one
line here."""

from __future__ import annotations

from lakefill.pipelines.commands import (demo, detect, evaluate, impute, maintain, models, report, run, schema, train,
                                         validate)

COMMANDS = (detect, schema, validate, train, impute, evaluate, run, models, maintain, report, demo)
