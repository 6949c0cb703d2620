"""docs/declaration.md from the declaration schema:
``python -m modelyard.declarations.schema.docs OUT`` (``make generate``). A test fails
when the committed file and the schema drift."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelyard.declarations.schema import DECLARATION, declaration_schema_inlined

# How map keys and list items read in a dotted key path.
MAP_KEY_NAMES = {
    "versions": "<library>",
    "columns": "<column>",
    "nodeSelector": "<label>",
    "environments": "<environment>",
}


def _type(node: dict[str, Any]) -> str:
    if "enum" in node:
        return "one of " + ", ".join(f"`{v}`" for v in node["enum"])
    kind = node.get("type", "any")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    items = node.get("items")
    if kind == "array" and isinstance(items, dict) and "properties" not in items:
        kind = f"list of {_type(items)}"
    bounds = []
    if "minimum" in node and "maximum" in node:
        bounds.append(f"from {node['minimum']} to {node['maximum']}")
    elif "minimum" in node:
        bounds.append(f"≥ {node['minimum']}")
    if "pattern" in node:
        bounds.append(f"matching `{node['pattern']}`")
    return " ".join([kind, *bounds])


def _rows(node: dict[str, Any], path: str) -> Iterator[tuple[str, str, bool, str]]:
    required = set(node.get("required", []))
    for key, child in node.get("properties", {}).items():
        key_path = f"{path}.{key}" if path else key
        yield key_path, _type(child), key in required, child.get("description", "")
        yield from _children(child, key_path, key)


def _children(node: dict[str, Any], path: str, key: str) -> Iterator[tuple[str, str, bool, str]]:
    if "properties" in node:
        yield from _rows(node, path)
    items = node.get("items")
    if isinstance(items, dict) and "properties" in items:
        yield from _rows(items, f"{path}[]")
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        entry = f"{path}.{MAP_KEY_NAMES.get(key, '<key>')}"
        yield entry, _type(extra), False, extra.get("description", "")
        yield from _children(extra, entry, key)


def _conditions(schema: dict[str, Any]) -> Iterator[str]:
    """The conditional requirements, written as anyOf(runtime is not X, the keys are there)."""
    for rule in schema.get("allOf", []):
        unless, then = rule["anyOf"]
        runtimes = unless["properties"]["runtime"]["not"]["enum"]
        keys = list(then.get("required", []))
        for key, sub in then.get("properties", {}).items():
            keys = [k for k in keys if k != key] + [f"{key}.{r}" for r in sub.get("required", [])]
        needs = ", ".join(f"`{k}`" for k in keys)
        yield f"- `runtime: {'` / `'.join(runtimes)}` needs {needs}."


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    schema = declaration_schema_inlined()
    lines = [
        "# The model declaration (`model.yaml`)",
        "",
        f"Generated from `modelyard/declarations/schema/{DECLARATION}` by `make generate`;",
        "edit the schema, not this file.",
        "",
        schema["description"],
        "",
        "Check a folder with `modelyard validate PATH`: every problem is printed at once as",
        "`file: /json/pointer: message`.",
        "",
        "## Required by runtime",
        "",
        *_conditions(schema),
        "",
        "## Keys",
        "",
        "`a.b` is key `b` inside `a`; `a[]` is each item of the list `a`; `<name>` is any key",
        "of a mapping.",
        "",
        "| key | type | required | description |",
        "|---|---|---|---|",
    ]
    for key, kind, required, description in _rows(schema, ""):
        lines.append(
            f"| `{key}` | {_cell(kind)} | {'yes' if required else ''} | {_cell(description)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m modelyard.declarations.schema.docs OUT.md", file=sys.stderr)
        return 2
    Path(argv[0]).parent.mkdir(parents=True, exist_ok=True)
    Path(argv[0]).write_text(render())
    print(f"wrote {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
