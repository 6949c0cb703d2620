"""`${VAR}` and `${VAR:-default}` in declarations, expanded from the environment.

Generated settings keep the placeholders (so a secret never lands in a file or a
ConfigMap); they are expanded where the value is used, at load or run time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class MissingVariable(KeyError):
    def __init__(self, name: str, text: str):
        self.name = name
        super().__init__(
            f"environment variable {name} is not set (used in {text!r}); "
            f"set it or give a default as ${{{name}:-value}}"
        )

    def __str__(self) -> str:
        return str(self.args[0])


def expand(text: str, env: Mapping[str, str] | None = None) -> str:
    """Expand every placeholder in ``text``; a variable with no value and no default raises."""
    env = os.environ if env is None else env

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise MissingVariable(name, text)
            return default
        return value

    return PATTERN.sub(sub, text)


def expand_all(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """``expand`` applied to every string in nested dicts and lists."""
    if isinstance(value, str):
        return expand(value, env)
    if isinstance(value, dict):
        return {k: expand_all(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_all(v, env) for v in value]
    return value


def variables(text: str) -> list[str]:
    return [m.group(1) for m in PATTERN.finditer(text)]
