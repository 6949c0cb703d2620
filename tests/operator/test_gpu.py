"""GPU placement: the node label and tolerations come from the operator's configuration
(the chart's values), and a Model's `gpu.nodeLabel` overrides the label."""

from __future__ import annotations

from typing import Any

import pytest
from modelyard_operator.config import ConfigError, OperatorConfig
from modelyard_operator.render.common import RenderOptions, scheduling
from modelyard_operator.spec import Model


def gpu_model(gpu: dict[str, Any]) -> Model:
    body = {
        "apiVersion": "modelyard.io/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "llm", "namespace": "ml", "generation": 1},
        "spec": {
            "folder": "s3://models/llm/",
            "version": "1",
            "runtime": "huggingface",
            "model": {"uri": "./"},
            "deployment": {"resources": {"gpu": gpu}},
        },
    }
    return Model.from_body(body)


def test_default_label_is_nvidia_feature_discovery_not_gke() -> None:
    placed = scheduling(gpu_model({"type": "Tesla-T4", "count": 1}), RenderOptions())
    assert placed == {
        "nodeSelector": {"nvidia.com/gpu.product": "Tesla-T4"},
        "tolerations": [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}],
    }


def test_model_names_its_label_and_the_chart_its_tolerations() -> None:
    config = OperatorConfig.from_env(
        {
            "MODELYARD_OPERATOR_GPU_NODE_LABEL": "accelerator",
            "MODELYARD_OPERATOR_GPU_TOLERATIONS": '[{"key": "gpu", "operator": "Equal",'
            ' "value": "true", "effect": "NoSchedule"}, {"key": "sku", "operator": "Exists"}]',
        }
    )
    options = RenderOptions(
        gpu_node_label=config.gpu_node_label,
        gpu_tolerations=tuple(t.pairs() for t in config.gpu_tolerations),
    )
    chart_label = scheduling(gpu_model({"type": "a100", "count": 1}), options)
    assert chart_label["nodeSelector"] == {"accelerator": "a100"}
    assert chart_label["tolerations"] == [
        {"effect": "NoSchedule", "key": "gpu", "operator": "Equal", "value": "true"},
        {"key": "sku", "operator": "Exists"},
    ]
    gke = {"type": "nvidia-tesla-t4", "count": 1, "nodeLabel": "cloud.google.com/gke-accelerator"}
    assert scheduling(gpu_model(gke), options)["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-tesla-t4"
    }
    # Without a type, no label is asked for: any node with the GPU resource will do.
    assert "nodeSelector" not in scheduling(gpu_model({"count": 2}), options)


def test_no_gpu_tolerations_when_the_chart_says_none() -> None:
    config = OperatorConfig.from_env({"MODELYARD_OPERATOR_GPU_TOLERATIONS": "[]"})
    options = RenderOptions(gpu_tolerations=tuple(t.pairs() for t in config.gpu_tolerations))
    assert "tolerations" not in scheduling(gpu_model({"count": 1}), options)


def test_bad_tolerations_stop_the_operator() -> None:
    with pytest.raises(ConfigError, match="MODELYARD_OPERATOR_GPU_TOLERATIONS"):
        OperatorConfig.from_env({"MODELYARD_OPERATOR_GPU_TOLERATIONS": '[{"operator": "Maybe"}]'})
