"""Write what a cluster gets, for checkov: every example Model resource as `modelyard
render` renders it (examples/*/k8s/*.yaml), the Model with every Secret of `auth`, `tls`
and the admin token, a rollout's candidate and a registry model's pinned pods as the
operator's tests pin them (tests/operator/golden), and the chart as Helm renders it with
its defaults and with a tracking server's credentials.
Usage: python scripts/checkov/render.py OUT_DIR"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import helm_python as helm

REPO = Path(__file__).resolve().parents[2]
MODELYARD = str(Path(sys.executable).parent / "modelyard")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for example in sorted(REPO.glob("examples/*/k8s/*.yaml")):
        name = f"{example.parents[1].name}-{example.stem}.yaml"
        rendered = subprocess.run(
            # In a namespace of its own, as a cluster's models are (the operator renders
            # into the Model's namespace).
            [MODELYARD, "render", str(example), "--namespace", "models"],
            check=True,
            capture_output=True,
            text=True,
        )
        (out / name).write_text(rendered.stdout)
    # And a rollout's candidate (its own Deployment, Service, NetworkPolicy), the
    # init container building a folder's environment, and a registry model's pinned pods
    # (MLflow's credentials from a Secret).
    for golden in ("secured", "rollout-candidate", "build-environment", "registry-pinned"):
        path = REPO / "tests" / "operator" / "golden" / f"{golden}.yaml"
        (out / f"golden-{golden}.yaml").write_text(path.read_text())
    with helm.Chart.load(REPO / "charts" / "modelyard") as chart:
        files = chart.render(None, name="modelyard", namespace="modelyard")
    text = "\n---\n".join(t for n, t in sorted(files.items()) if n.endswith(".yaml"))
    (out / "chart.yaml").write_text(text)
    # The operator with a tracking server and its credentials from a Secret.
    mlflow = {"trackingUri": "http://mlflow.mlflow:5000", "credentialsSecret": "mlflow-reader"}
    with helm.Chart.load(REPO / "charts" / "modelyard") as chart:
        files = chart.render(
            {"mlflow": {**mlflow, "pollSeconds": 60}}, name="modelyard", namespace="modelyard"
        )
    (out / "chart-mlflow.yaml").write_text(files["modelyard/templates/deployment.yaml"])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
