"""The Model CRD is generated from the declaration schema and committed; they never drift."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from modelyard_operator import crd


def test_committed_crd_is_generated_from_the_declaration_schema() -> None:
    assert crd.CRD_FILE.read_text() == crd.render(), "run `make generate` and commit the CRD"


def test_spec_has_every_declaration_key_and_the_cluster_keys() -> None:
    committed = yaml.safe_load(crd.CRD_FILE.read_text())
    version = committed["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    declared = set(crd.declaration_schema()["properties"])
    assert set(spec["properties"]) == declared | set(crd.CLUSTER_PROPERTIES)
    assert "name" not in spec["required"]  # the resource's name stands in
    assert version["subresources"] == {"status": {}}


def test_the_charts_crd_is_the_operators_with_helms_keep_policy() -> None:
    assert crd.CHART_CRD_FILE.read_text() == crd.render_chart_template(), (
        "run `make generate` and commit the chart's CRD"
    )
    body = crd.CHART_CRD_FILE.read_text().splitlines()
    assert body[1] == "{{- if .Values.crds.create }}" and body[-1] == "{{- end }}"
    installed = yaml.safe_load("\n".join(body[2:-1]))
    assert installed["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert installed == crd.crd()


def test_free_form_values_are_preserved() -> None:
    converted = crd.structural(
        {
            "type": "object",
            "properties": {"parameters": {"type": "object"}, "data": {"type": "array"}},
        },
        {},
    )
    preserved = {"x-kubernetes-preserve-unknown-fields": True}
    assert converted["properties"]["parameters"] == {"type": "object", **preserved}
    assert converted["properties"]["data"] == {"type": "array", "items": preserved}


def test_a_value_of_one_type_or_another_is_preserved() -> None:
    column_or_columns = {
        "description": "a column or a list of columns",
        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    }
    converted = crd.structural({"type": "object", "additionalProperties": column_or_columns}, {})
    assert converted["additionalProperties"] == {
        "description": "a column or a list of columns",
        "x-kubernetes-preserve-unknown-fields": True,
    }


def test_a_rule_without_a_structural_equivalent_fails_loudly() -> None:
    schema = {"type": "object", "properties": {"kind": {"type": "string", "const": "x"}}}
    with pytest.raises(crd.SchemaConversionError, match=r"#/properties/kind: keywords \['const'\]"):
        crd.structural(schema, {})


def test_check_mode_reports_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text("stale\n")
    monkeypatch.setattr(crd, "CRD_FILE", stale)
    monkeypatch.setattr(crd, "CHART_CRD_FILE", tmp_path / "chart" / "crd.yaml")
    assert crd.main(["--check"]) == 1
    assert crd.main([]) == 0
    assert crd.main(["--check"]) == 0
