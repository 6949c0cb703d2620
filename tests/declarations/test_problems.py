"""Broken declarations: each mistake is reported once, at its JSON pointer, with a message
that says what to do; `modelyard validate` prints them all and exits 2."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard.declarations.load import declaration_problems
from modelyard.declarations.settings import model_settings_for_folder
from modelyard.errors import InvalidModelFolder
from tests.support.declarations import (
    BASE,
    SEVERAL,
    SEVERAL_EXPECTED,
    base,
    model_folder,
    run_cli,
)

Mutation = Callable[[dict[str, Any], Path], "dict[str, Any] | str | None"]


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Mutation
    pointer: str
    fragment: str


def setting(path: str, value: Any) -> Mutation:
    """Set (or, with value None, delete) the key at a dotted path; digits index lists."""

    def mutate(d: dict[str, Any], folder: Path) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = d
        for p in parents:
            node = node[p]
        if value is None:
            del node[last]
        else:
            node[last] = value

    return mutate


def predictor_file(source: str) -> Mutation:
    def mutate(d: dict[str, Any], folder: Path) -> None:
        (folder / "predictor.py").write_text(source)

    return mutate


def both(*mutations: Mutation) -> Mutation:
    def mutate(d: dict[str, Any], folder: Path) -> dict[str, Any] | str | None:
        result = None
        for m in mutations:
            result = m(d, folder) or result
        return result

    return mutate


def raw(text: str) -> Mutation:
    return lambda d, folder: text


NO_PREDICT = "class Scorer:\n    def load(self, artifacts_dir):\n        pass\n"
PREDICT_NO_ARG = "class Scorer:\n    def predict(self):\n        return 1\n"
BROKEN_IMPORT = "import no_such_module_anywhere\n\nclass Scorer:\n    pass\n"

CASES = [
    Case(
        "unknown-top-level-key",
        setting("exmaple", {"inputs": []}),
        "/exmaple",
        "did you mean 'example'?",
    ),
    Case(
        "unknown-nested-key",
        setting("serving.max_batch_tim_ms", 3),
        "/serving/max_batch_tim_ms",
        "did you mean 'max_batch_time_ms'?",
    ),
    Case(
        "unknown-key-no-close-match",
        setting("model.weights", "w.bin"),
        "/model/weights",
        "allowed here: uri, sha256, versions, parameters",
    ),
    Case("version-is-a-number", setting("version", 1.0), "/version", "quotes"),
    Case("name-not-dns-label", setting("name", "My_Model"), "/name", "DNS-1123"),
    Case(
        "runtime-unknown",
        setting("runtime", "sklearn-runtime"),
        "/runtime",
        "did you mean 'sklearn'?",
    ),
    Case(
        "input-datatype-alias",
        setting("inputs.0.datatype", "float32"),
        "/inputs/0/datatype",
        "did you mean 'FP32'?",
    ),
    Case(
        "input-shape-below-minus-one",
        setting("inputs.0.shape", [-2, 2]),
        "/inputs/0/shape/0",
        "minimum of -1",
    ),
    Case("input-missing-shape", setting("inputs.0.shape", None), "/inputs/0/shape", "missing"),
    Case(
        "input-name-twice",
        setting("inputs", [BASE["inputs"][0], BASE["inputs"][0]]),
        "/inputs/1/name",
        "declared twice",
    ),
    Case(
        "column-datatype-not-v2",
        setting("predictions.columns.score", "double"),
        "/predictions/columns/score",
        "did you mean 'FP64'?",
    ),
    Case(
        "cron-out-of-range",
        setting("predictions.schedule", "61 3 * * *"),
        "/predictions/schedule",
        "not a five-field cron",
    ),
    Case(
        "cron-six-fields",
        setting("predictions.schedule", "0 0 3 * * *"),
        "/predictions/schedule",
        "'0 3 * * *'",
    ),
    Case("shards-zero", setting("predictions.shards", 0), "/predictions/shards", "minimum of 1"),
    Case(
        "uri-escapes-folder",
        setting("model.uri", "../../etc/passwd"),
        "/model/uri",
        "outside the model folder",
    ),
    Case(
        "sql-escapes-folder",
        setting("features.sql", "../features.sql"),
        "/features/sql",
        "outside the model folder",
    ),
    Case(
        "preprocess-missing",
        setting("features.preprocess", "missing.pkl"),
        "/features/preprocess",
        "missing.pkl does not exist",
    ),
    Case(
        "drift-reference-missing",
        setting("monitoring", {"reference": "reference.parquet"}),
        "/monitoring/reference",
        "reference.parquet does not exist",
    ),
    Case(
        "requirements-missing",
        setting("python", {"requirements": "deps.txt"}),
        "/python/requirements",
        "deps.txt does not exist",
    ),
    Case(
        "requirements-name-an-index",
        lambda d, folder: (folder / "requirements.txt").write_text(
            "six==1.16.0\n--extra-index-url https://elsewhere.example/simple\n"
        ),
        "",
        "line 2: --extra-index-url is not taken from a model folder",
    ),
    Case(
        "drift-reference-not-a-table",
        setting("monitoring", {"reference": "reference.json"}),
        "/monitoring/reference",
        "is not a valid reference: A Parquet or CSV file",
    ),
    Case(
        "sha256-mismatch",
        setting("model.sha256", "0" * 64),
        "/model/sha256",
        "sha256 mismatch for model.bin",
    ),
    Case("sha256-not-hex", setting("model.sha256", "abc"), "/model/sha256", "not a valid sha256"),
    Case("sha256-without-uri", both(setting("model.uri", None)), "/model/sha256", "covers no file"),
    Case(
        "version-mismatch",
        setting("model.versions.scikit-learn", "0.0.1"),
        "/model/versions/scikit-learn",
        "trained with 0.0.1, installed",
    ),
    Case(
        "library-not-installed",
        setting("model.versions.no-such-library", "1.0"),
        "/model/versions/no-such-library",
        "not installed",
    ),
    Case(
        "version-unquoted",
        setting("model.versions.scikit-learn", 1.9),
        "/model/versions/scikit-learn",
        "quotes",
    ),
    Case(
        "missing-env-var",
        setting("features.source", "${MODELYARD_TEST_UNSET_URL}"),
        "/features/source",
        "MODELYARD_TEST_UNSET_URL is not set",
    ),
    Case(
        "predictor-missing", setting("predictor", None), "/predictor", "runtime predictor needs it"
    ),
    Case(
        "predictor-unimportable",
        predictor_file(BROKEN_IMPORT),
        "/predictor",
        "No module named 'no_such_module_anywhere'",
    ),
    Case(
        "predictor-no-such-class",
        setting("predictor", "predictor.py:Nope"),
        "/predictor",
        "has no class Nope",
    ),
    Case(
        "predictor-escapes-folder",
        setting("predictor", "../../etc/evil.py:X"),
        "/predictor",
        "outside the model folder",
    ),
    Case(
        "predictor-no-predict",
        predictor_file(NO_PREDICT),
        "/predictor",
        "no predict(self, instances)",
    ),
    Case(
        "predictor-predict-takes-nothing",
        predictor_file(PREDICT_NO_ARG),
        "/predictor",
        "define it as predict(self, instances)",
    ),
    Case(
        "implementation-on-predictor",
        setting("implementation", "pkg.Model"),
        "/implementation",
        "only read with runtime: custom",
    ),
    Case(
        "custom-without-implementation",
        both(setting("runtime", "custom"), setting("predictor", None)),
        "/implementation",
        "runtime custom needs it",
    ),
    Case(
        "custom-not-an-mlmodel",
        both(
            setting("runtime", "custom"),
            setting("predictor", None),
            setting("implementation", "predictor.Scorer"),
        ),
        "/implementation",
        "not an mlserver.MLModel",
    ),
    Case(
        "sklearn-without-uri",
        both(
            setting("runtime", "sklearn"),
            setting("predictor", None),
            setting("model.sha256", None),
            setting("model.uri", None),
        ),
        "/model/uri",
        "runtime sklearn needs it",
    ),
    Case(
        "replicas-min-above-max",
        setting("deployment.replicas", {"min": 4, "max": 2}),
        "/deployment/replicas",
        "min 4 is more than max 2",
    ),
    Case(
        "overlay-min-above-max",
        setting("deployment.environments.staging.replicas", {"max": 0}),
        "/deployment/environments/staging/replicas/max",
        "minimum of 1",
    ),
    Case(
        "overlay-merged-min-above-max",
        setting("deployment.environments.staging.replicas", {"min": 5}),
        "/deployment/environments/staging/replicas",
        "min 5 is more than max 3",
    ),
    Case(
        "autoscaling-metric",
        setting("deployment.autoscaling.metric", "gpu"),
        "/deployment/autoscaling/metric",
        "requests-in-flight",
    ),
    Case(
        "cpu-unquoted",
        setting("deployment.resources.cpu", 2),
        "/deployment/resources/cpu",
        "quotes",
    ),
    Case(
        "memory-not-a-quantity",
        setting("deployment.resources.memory", "1 GB"),
        "/deployment/resources/memory",
        "not a valid memory",
    ),
    Case(
        "sample-rate-above-one",
        setting("monitoring.payload_sample_rate", 1.5),
        "/monitoring/payload_sample_rate",
        "maximum of 1",
    ),
    Case(
        "example-wrong-datatype",
        setting("example.inputs.0.datatype", "FP32"),
        "/example",
        "FP32; expected FP64",
    ),
    Case(
        "example-unknown-input",
        setting("example.inputs.0.name", "y"),
        "/example",
        "unknown input 'y'",
    ),
    Case(
        "yaml-syntax",
        raw("name: scorer\nversion: '1'\nruntime: [predictor\n"),
        "",
        "not valid YAML at line",
    ),
    Case(
        "yaml-key-twice",
        raw("name: a\nname: b\nversion: '1'\nruntime: sklearn\n"),
        "",
        "key 'name' is given twice",
    ),
    Case("not-a-mapping", raw("- name: scorer\n"), "", "must be a mapping"),
]


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of model folders, one per case."""
    root = tmp_path_factory.mktemp("broken")
    for case in CASES:
        folder = model_folder(root / case.id)
        decl = base()
        text = case.mutate(decl, folder)
        (folder / "model.yaml").write_text(
            text if isinstance(text, str) else yaml.safe_dump(decl, sort_keys=False)
        )
    return root


@pytest.fixture(scope="module")
def validate_output(broken: Path) -> tuple[int, list[str]]:
    result = run_cli("validate", str(broken))
    return result.returncode, result.stdout.splitlines()


def test_the_base_declaration_is_valid(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "scorer")
    assert declaration_problems(folder / "model.yaml") == []
    result = run_cli("validate", str(folder))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "1 file checked: all valid"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_one_problem_at_its_pointer(broken: Path, case: Case) -> None:
    path = broken / case.id / "model.yaml"
    problems = declaration_problems(path)
    assert len(problems) == 1, "\n".join(map(str, problems))
    (problem,) = problems
    assert problem.file == str(path)
    assert problem.pointer == case.pointer
    assert case.fragment in problem.message


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_validate_prints_it(
    validate_output: tuple[int, list[str]], broken: Path, case: Case
) -> None:
    code, lines = validate_output
    assert code == 2
    prefix = f"{broken / case.id / 'model.yaml'}: {case.pointer or '/'}: "
    printed = [line for line in lines if line.startswith(prefix)]
    assert len(printed) == 1, "\n".join(lines)
    assert case.fragment in printed[0]


def test_validate_sums_up(validate_output: tuple[int, list[str]]) -> None:
    _, lines = validate_output
    assert lines[-1] == (
        f"{len(CASES)} files checked: 0 valid, {len(CASES)} invalid ({len(CASES)} problems)"
    )


def test_several_problems_are_reported_at_once(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "several", SEVERAL)
    with pytest.raises(InvalidModelFolder) as info:
        model_settings_for_folder(folder)
    found = {p.pointer: p.message for p in info.value.problems}
    assert set(found) == set(SEVERAL_EXPECTED), found
    for ptr, fragment in SEVERAL_EXPECTED.items():
        assert fragment in found[ptr], (ptr, found[ptr])

    result = run_cli("validate", str(folder / "model.yaml"))
    assert result.returncode == 2
    lines = result.stdout.splitlines()
    # In pointer order, one line each, then the summary.
    assert [line.split(": ")[1] for line in lines[:-1]] == sorted(SEVERAL_EXPECTED)
    assert lines[-1] == f"1 file checked: 0 valid, 1 invalid ({len(SEVERAL_EXPECTED)} problems)"


def test_huggingface_needs_a_task_and_a_model_in_the_folder(tmp_path: Path) -> None:
    decl = {"name": "hf", "version": "1", "runtime": "huggingface", "model": {"uri": "./"}}
    folder = model_folder(tmp_path / "hf", decl)
    found = {p.pointer: p.message for p in declaration_problems(folder / "model.yaml")}
    assert set(found) == {"/model/parameters/task", "/model/uri"}
    assert "text-classification" in found["/model/parameters/task"]
    assert "no config.json" in found["/model/uri"]


def test_a_set_variable_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decl = base()
    decl["model"]["uri"] = "${MODEL_FILE}"
    folder = model_folder(tmp_path / "scorer", decl)
    monkeypatch.setenv("MODEL_FILE", "elsewhere.bin")
    (problem,) = declaration_problems(folder / "model.yaml")
    assert problem.pointer == "/model/uri"
    assert "elsewhere.bin does not exist" in problem.message
    monkeypatch.setenv("MODEL_FILE", "model.bin")
    assert declaration_problems(folder / "model.yaml") == []
