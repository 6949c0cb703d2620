"""The schemas themselves: strict everywhere, described everywhere, usable without $ref,
in step with MLServer's settings and with the committed docs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from mlserver.settings import ModelParameters, ModelSettings

from modelyard.declarations.schema import (
    declaration_schema,
    declaration_schema_inlined,
    inlined,
    model_settings_schema,
)
from modelyard.declarations.schema.docs import render
from tests.support.declarations import base
from tests.support.server import REPO

SCHEMAS = {"declaration": declaration_schema, "model-settings": model_settings_schema}


def nodes(schema: Any, path: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every subschema with its location."""
    if isinstance(schema, dict):
        yield path, schema
        for key, value in schema.items():
            if key in ("properties", "$defs"):
                for name, sub in value.items():
                    yield from nodes(sub, f"{path}/{key}/{name}")
            elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
                yield from nodes(value, f"{path}/{key}")
            elif key in ("allOf", "anyOf", "oneOf"):
                for i, sub in enumerate(value):
                    yield from nodes(sub, f"{path}/{key}/{i}")


@pytest.mark.parametrize("name", SCHEMAS)
def test_is_a_valid_draft_2020_12_schema(name: str) -> None:
    schema = SCHEMAS[name]()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_declaration_objects_are_closed_and_every_property_is_described() -> None:
    for path, node in nodes(declaration_schema_inlined()):
        if "properties" in node and "/anyOf/" not in path:
            assert node.get("additionalProperties") is False, path
        for name, prop in node.get("properties", {}).items():
            if "/anyOf/" not in path:
                assert prop.get("description"), f"{path}/properties/{name}"


def test_top_level_keys_are_the_designed_ones() -> None:
    assert list(declaration_schema()["properties"]) == [
        "name", "version", "runtime", "predictor", "implementation", "model", "inputs",
        "outputs", "features", "predictions", "serving", "deployment", "monitoring", "rollout",
        "python", "example",
    ]  # fmt: skip


def test_inlined_has_no_refs_and_accepts_and_refuses_the_same() -> None:
    flat = declaration_schema_inlined()
    assert "$ref" not in str(flat) and "$defs" not in flat
    good = base()
    bad = base()
    bad["inputs"][0]["datatype"] = "FLOAT"
    bad["deployment"]["environments"]["staging"]["replicas"]["min"] = -1
    for schema in (declaration_schema(), flat):
        validator = Draft202012Validator(schema)
        assert list(validator.iter_errors(good)) == []
        assert sorted(e.json_path for e in validator.iter_errors(bad)) == [
            "$.deployment.environments.staging.replicas.min",
            "$.inputs[0].datatype",
        ]


def test_inline_refuses_a_cycle() -> None:
    cyclic = {"$defs": {"a": {"items": {"$ref": "#/$defs/a"}}}, "$ref": "#/$defs/a"}
    with pytest.raises(ValueError, match="refers to itself"):
        inlined(cyclic)


def test_model_settings_schema_has_every_field_of_mlserver() -> None:
    schema = model_settings_schema()
    fields = {f.serialization_alias or n for n, f in ModelSettings.model_fields.items()}
    assert set(schema["properties"]) == fields
    assert set(schema["properties"]["parameters"]["properties"]) == set(
        ModelParameters.model_fields
    )


def test_committed_docs_match_the_schema() -> None:
    committed = (REPO / "docs" / "declaration.md").read_text()
    assert committed == render(), "docs/declaration.md is stale: run `make generate`"
