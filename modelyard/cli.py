"""The `modelyard` command line. Each subcommand lives in `modelyard.commands.*` and is
imported only when it runs, so `modelyard validate` does not pay for importing MLServer."""

from __future__ import annotations

import importlib
import os

import click

# name -> "module:attribute" of a click command
COMMANDS = {
    "serve": "modelyard.commands.serve:serve",
    "status": "modelyard.commands.status:status",
    "validate": "modelyard.commands.validate:validate",
    "build": "modelyard.commands.build:build",
    "new": "modelyard.commands.new:new",
    "render": "modelyard.commands.render:render",
    "batch": "modelyard.commands.batch:batch",
    "predictions": "modelyard.commands.predictions:predictions",
    "feedback": "modelyard.commands.feedback:feedback",
    "metrics": "modelyard.commands.metrics:metrics",
    "drift": "modelyard.commands.drift:drift",
    "predict": "modelyard.commands.predict:predict",
    "rollout": "modelyard.commands.rollout:rollout",
    "envs": "modelyard.commands.envs:envs",
    "image": "modelyard.commands.image:image",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="modelyard")
def main() -> None:
    """modelyard: drop a model folder, get a V2 endpoint over REST and gRPC.

    Start with `modelyard new NAME --runtime sklearn --template no-code`, then
    `modelyard validate model-settings/` and `modelyard serve`.
    """
    # transformers would otherwise import TensorFlow next to PyTorch on every load.
    os.environ.setdefault("USE_TF", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
