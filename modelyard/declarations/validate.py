"""Validation against the JSON Schemas: every error at once, each a Problem with its JSON
pointer and a message that says what to write instead."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from modelyard.declarations.schema import declaration_schema, model_settings_schema
from modelyard.errors import Problem

# What people write for a V2 datatype, mapped to what they mean.
DATATYPE_ALIASES = {
    "bool": "BOOL",
    "boolean": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int": "INT64",
    "int64": "INT64",
    "long": "INT64",
    "float16": "FP16",
    "half": "FP16",
    "float": "FP32",
    "float32": "FP32",
    "float64": "FP64",
    "double": "FP64",
    "str": "BYTES",
    "string": "BYTES",
    "bytes": "BYTES",
    "object": "BYTES",
}

JSON_TYPES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
    type(None): "null",
}


@functools.cache
def declaration_validator() -> Draft202012Validator:
    return Draft202012Validator(declaration_schema())


@functools.cache
def model_settings_validator() -> Draft202012Validator:
    return Draft202012Validator(model_settings_schema())


def pointer(parts: Iterable[str | int]) -> str:
    """The JSON pointer (RFC 6901) of a path."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def pointer_key(ptr: str) -> tuple[tuple[int, int | str], ...]:
    """Sorts pointers as paths, list indices numerically."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in ptr.split("/")[1:])


def is_within(ptr: str, parent: str) -> bool:
    return ptr == parent or ptr.startswith(parent + "/")


def did_you_mean(word: str, choices: Sequence[str]) -> str | None:
    """The closest choice to a misspelt ``word``, if one is close enough."""
    by_case = {c.lower(): c for c in choices}
    if word.lower() in by_case:
        return by_case[word.lower()]
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not match:
        match = difflib.get_close_matches(word.lower(), list(by_case), n=1, cutoff=0.6)
        match = [by_case[m] for m in match]
    return match[0] if match else None


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return {**root["$defs"][ref.removeprefix("#/$defs/")], **schema}
    return schema


def schema_at(root: dict[str, Any], parts: Sequence[str | int]) -> dict[str, Any] | None:
    """The subschema that describes the value at ``parts``, following properties, items,
    additionalProperties and local refs."""
    node = _resolve(root, root)
    for part in parts:
        props = node.get("properties", {})
        if isinstance(part, int) and isinstance(node.get("items"), dict):
            node = node["items"]
        elif isinstance(part, str) and part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
        node = _resolve(node, root)
    return node


def _described(root: dict[str, Any], parts: Sequence[str | int]) -> str:
    node = schema_at(root, parts)
    description = node.get("description") if node else None
    return f": {description}" if description else ""


def _type_name(value: Any) -> str:
    return JSON_TYPES.get(type(value), type(value).__name__)


def _enum_hint(value: Any, choices: Sequence[Any]) -> str:
    names = [c for c in choices if isinstance(c, str)]
    if not isinstance(value, str) or not names:
        return ""
    guess = None
    if set(DATATYPE_ALIASES.values()) <= set(names):
        guess = DATATYPE_ALIASES.get(value.lower())
    guess = guess or did_you_mean(value, names)
    return f"; did you mean {guess!r}?" if guess else ""


def _problems_of(
    error: ValidationError, root: dict[str, Any], data: Any, file: str
) -> list[Problem]:
    path = list(error.absolute_path)
    where = pointer(path)
    kind = error.validator
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        problems = []
        for key in error.instance:
            if key in allowed:
                continue
            guess = did_you_mean(str(key), allowed)
            hint = f"did you mean {guess!r}?" if guess else "allowed here: " + ", ".join(allowed)
            problems.append(Problem(file, pointer([*path, key]), f"unknown key {key!r}; {hint}"))
        return problems
    if kind == "required" and isinstance(error.instance, dict):
        return [
            Problem(file, pointer([*path, key]), f"missing{_described(root, [*path, key])}")
            for key in error.validator_value
            if key not in error.instance
        ]
    if kind == "anyOf":
        # The schema's conditional requirements ("runtime: predictor needs predictor")
        # are anyOf(runtime is not X, the key is there): report the missing key.
        runtime = data.get("runtime") if isinstance(data, dict) else None
        missing = [
            Problem(
                file,
                pointer([*sub.absolute_path, key]),
                f"missing: runtime {runtime} needs it{_described(root, [*sub.absolute_path, key])}",
            )
            for sub in error.context or []
            if sub.validator == "required" and isinstance(sub.instance, dict)
            for key in sub.validator_value
            if key not in sub.instance
        ]
        if missing:
            return missing
    if kind == "enum":
        choices = error.validator_value
        return [
            Problem(
                file,
                where,
                f"{error.instance!r} is not one of {', '.join(map(str, choices))}"
                + _enum_hint(error.instance, choices),
            )
        ]
    if kind == "type":
        expected = error.validator_value
        expected = expected if isinstance(expected, list) else [expected]
        message = (
            f"{error.instance!r} is {_type_name(error.instance)}; expected {' or '.join(expected)}"
        )
        if "string" in expected and isinstance(error.instance, int | float | bool):
            message += " (put it in quotes so YAML reads it as text)"
        return [Problem(file, where, message)]
    if kind == "pattern":
        name = path[-1] if path and isinstance(path[-1], str) else "value"
        return [
            Problem(
                file, where, f"{error.instance!r} is not a valid {name}{_described(root, path)}"
            )
        ]
    return [Problem(file, where, error.message)]


def schema_problems(validator: Draft202012Validator, data: Any, file: str) -> list[Problem]:
    """Every way ``data`` breaks the validator's schema, sorted by pointer."""
    root = validator.schema
    problems: list[Problem] = []
    for error in validator.iter_errors(data):
        problems.extend(_problems_of(error, root, data, file))
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: pointer_key(p.pointer))


def check_model_settings(data: dict[str, Any], path: Path) -> list[Problem]:
    """A plain ``model-settings.json`` against the strict schema of MLServer's ModelSettings."""
    return schema_problems(model_settings_validator(), data, str(path))
