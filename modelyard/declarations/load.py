"""The ``model.yaml`` declaration: read it and check it, reporting every problem at once.

The schema catches what is misspelt or mistyped; the checks here catch what only
code can see: files that are missing or outside the folder, a predictor class that
does not import, a cron schedule that does not parse, libraries that differ from the
ones the model was trained with (all before anything is unpickled).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import yaml

from modelyard.declarations.integrity import IntegrityError, verify_sha256, version_mismatches
from modelyard.declarations.interpolate import MissingVariable, expand
from modelyard.declarations.monitoring import monitoring_problems
from modelyard.declarations.validate import (
    declaration_validator,
    is_within,
    pointer,
    pointer_key,
    schema_problems,
)
from modelyard.errors import InvalidModelFolder, Problem
from modelyard.imports import ClassSpecError, is_inside, load_class

if TYPE_CHECKING:
    from mlserver.types import InferenceRequest

DECLARATION_FILENAME = "model.yaml"
# The predictor class: predict is required, the others are called when present.
PREDICTOR_METHODS = {
    "load": "artifacts_dir",
    "preprocess": "inputs",
    "predict": "instances",
    "postprocess": "predictions",
}
# A file and the key holding its sha256.
HASHED_FILES = (
    (("model", "uri"), ("model", "sha256")),
    (("features", "preprocess"), ("features", "preprocess_sha256")),
)
# Kubernetes CronJob accepts five fields or these.
CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


class _Loader(yaml.SafeLoader):
    """YAML that refuses a key given twice (PyYAML would keep the last silently)."""


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice; keep one", mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_declaration(path: Path) -> dict[str, Any]:
    """The declaration as data; a YAML error is an InvalidModelFolder naming line and column."""
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)  # a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise InvalidModelFolder(
            str(path.parent), [Problem(str(path), "", f"not valid YAML{where}: {e.problem}")]
        ) from None
    except yaml.YAMLError as e:
        raise InvalidModelFolder(
            str(path.parent), [Problem(str(path), "", f"not valid YAML: {e}")]
        ) from None
    if not isinstance(data, dict):
        raise InvalidModelFolder(
            str(path.parent),
            [Problem(str(path), "", "must be a mapping of keys (name, version, runtime, ...)")],
        )
    return data


@dataclass
class _Checks:
    """The checks beyond the schema, each yielding (pointer, message)."""

    data: dict[str, Any]
    folder: Path

    def get(self, *keys: str) -> Any:
        value: Any = self.data
        for key in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value

    def text(self, *keys: str) -> str | None:
        """A string value with its ${VAR} expanded; None when absent or not expandable."""
        value = self.get(*keys)
        if not isinstance(value, str):
            return None
        try:
            return expand(value)
        except MissingVariable:
            return None  # reported by variables()

    def all(self) -> Iterator[tuple[str, str]]:
        yield from self.variables(self.data, [])
        yield from self.files()
        yield from self.environment()
        yield from self.integrity()
        yield from self.signature()
        yield from self.runtime()
        yield from self.schedule()
        yield from self.feature_columns()
        yield from self.deployment()
        yield from self.example()
        yield from self.monitoring()

    def variables(self, value: Any, path: list[str | int]) -> Iterator[tuple[str, str]]:
        if isinstance(value, str):
            try:
                expand(value)
            except MissingVariable as e:
                yield pointer(path), str(e)
        elif isinstance(value, dict):
            for k, v in value.items():
                yield from self.variables(v, [*path, k])
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from self.variables(v, [*path, i])

    def local(self, value: str, what: str = "file") -> tuple[Path | None, str | None]:
        """The file or folder ``value`` names inside the model folder, or why it cannot be
        used; (None, None) for a remote URI, which is fetched where it is used."""
        parsed = urlparse(value)
        if parsed.scheme not in ("", "file"):
            return None, None
        path = self.folder / (parsed.path if parsed.scheme == "file" else value)
        if not is_inside(path, self.folder):
            return (
                None,
                f"{value} is outside the model folder {self.folder}; put the {what} inside it",
            )
        if not path.exists():
            return (
                None,
                f"{value} does not exist in {self.folder}; add the {what} there or fix the path",
            )
        return path, None

    def files(self) -> Iterator[tuple[str, str]]:
        named = [
            (("model", "uri"), "artifact"),
            (("features", "sql"), "query file"),
            (("features", "preprocess"), "fitted transformer"),
            (("monitoring", "reference"), "drift reference (a sample of the training data)"),
            (("python", "requirements"), "requirements file"),
        ]
        for keys, what in named:
            value = self.text(*keys)
            problem = self.local(value, what)[1] if value is not None else None
            if problem:
                yield pointer(keys), problem
        if self.get("runtime") == "huggingface":
            yield from self.huggingface()

    def huggingface(self) -> Iterator[tuple[str, str]]:
        params = self.get("model", "parameters")
        params = params if isinstance(params, dict) else {}
        if not isinstance(params.get("task"), str):
            yield (
                "/model/parameters/task",
                "missing: the Hugging Face pipeline task, e.g. text-classification",
            )
        uri = self.text("model", "uri")
        folder = self.local(uri)[0] if uri else None
        if (
            folder is not None
            and folder.is_dir()
            and not (folder / "config.json").is_file()
            and not params.get("pretrained_model")
        ):
            yield (
                "/model/uri",
                f"{uri} has no config.json; save the model there with save_pretrained() "
                "or name a hub model in model.parameters.pretrained_model",
            )

    def integrity(self) -> Iterator[tuple[str, str]]:
        name = self.get("name") or "?"
        for file_keys, hash_keys in HASHED_FILES:
            expected = self.get(*hash_keys)
            if not isinstance(expected, str):
                continue
            if self.get(*file_keys) is None:
                yield (
                    pointer(hash_keys),
                    f"covers no file: set {'.'.join(file_keys)} to the file it is the hash of",
                )
                continue
            value = self.text(*file_keys)
            if value is None:
                continue
            if urlparse(value).scheme not in ("", "file"):
                yield (
                    pointer(hash_keys),
                    f"{value} is remote, so its sha256 cannot be verified before loading; "
                    "download the artifact into the model folder and point to it",
                )
                continue
            path = self.local(value)[0]
            if path is not None:
                try:
                    verify_sha256(name, path, expected)
                except IntegrityError as e:
                    yield pointer(hash_keys), str(e)
        versions = self.get("model", "versions")
        if isinstance(versions, dict) and not self.own_environment():
            for lib, wanted in versions.items():
                if not isinstance(wanted, str):
                    continue
                for mismatch in version_mismatches({lib: wanted}):
                    yield (
                        pointer(["model", "versions", lib]),
                        f"{mismatch}; install it (pip install '{lib}=={wanted}') "
                        "or retrain and update model.versions",
                    )

    def own_environment(self) -> bool:
        """Whether the model runs on packages of its own (checked there, when it loads)."""
        return bool(self.get("python")) or (self.folder / "requirements.txt").is_file()

    def imported_elsewhere(self, error: ClassSpecError) -> bool:
        """A class that needs a package of the folder's own environment is imported there,
        when the model loads (in its worker), not here."""
        return self.own_environment() and "ModuleNotFoundError" in str(error)

    def environment(self) -> Iterator[tuple[str, str]]:
        from modelyard.environments import EnvironmentBuildError, check_requirements

        declared = self.text("python", "requirements")
        path = self.local(declared)[0] if declared else self.folder / "requirements.txt"
        if path is None or not path.is_file():
            return
        try:
            check_requirements(path)
        except EnvironmentBuildError as e:
            yield ("/python/requirements" if declared else ""), str(e)

    def signature(self) -> Iterator[tuple[str, str]]:
        for key in ("inputs", "outputs"):
            tensors = self.get(key)
            if not isinstance(tensors, list):
                continue
            seen: set[str] = set()
            for i, tensor in enumerate(tensors):
                name = tensor.get("name") if isinstance(tensor, dict) else None
                if not isinstance(name, str):
                    continue
                if name in seen:
                    yield pointer([key, i, "name"]), f"{name!r} is declared twice; rename one"
                seen.add(name)

    def runtime(self) -> Iterator[tuple[str, str]]:
        runtime = self.get("runtime")
        if runtime not in declaration_validator().schema["properties"]["runtime"]["enum"]:
            return  # the schema says so; what goes with which runtime cannot be told
        for key, owner in (("predictor", "predictor"), ("implementation", "custom")):
            if self.get(key) is not None and runtime != owner:
                yield (
                    f"/{key}",
                    f"only read with runtime: {owner}; remove it or set runtime: {owner}",
                )
        spec = self.get("predictor")
        if runtime == "predictor" and isinstance(spec, str):
            yield from self.predictor(spec)
        implementation = self.get("implementation")
        if runtime == "custom" and isinstance(implementation, str):
            yield from self.implementation(implementation)

    def predictor(self, spec: str) -> Iterator[tuple[str, str]]:
        try:
            cls = load_class(spec, self.folder)
        except ClassSpecError as e:
            if not self.imported_elsewhere(e):
                yield "/predictor", str(e)
            return
        if not callable(getattr(cls, "predict", None)):
            yield "/predictor", f"{spec} has no predict(self, instances) method; add one"
        for method, arg in PREDICTOR_METHODS.items():
            raw = inspect.getattr_static(cls, method, None)
            if raw is None:
                continue
            fn = getattr(cls, method)
            if not callable(fn):
                yield (
                    "/predictor",
                    f"{spec}: {method} is not a method; define {method}(self, {arg})",
                )
                continue
            args = (None,) if isinstance(raw, staticmethod | classmethod) else (None, None)
            try:
                sig = inspect.signature(fn)
            except (TypeError, ValueError):
                continue
            try:
                sig.bind(*args)
            except TypeError:
                yield (
                    "/predictor",
                    f"{spec}: {method}{sig} cannot take one argument; "
                    f"define it as {method}(self, {arg})",
                )

    def implementation(self, path: str) -> Iterator[tuple[str, str]]:
        module, _, name = path.rpartition(".")
        file = Path(*module.split(".")).with_suffix(".py")
        spec = f"{file}:{name}" if (self.folder / file).is_file() else f"{module}:{name}"
        # MLServer imports the implementation with the model folder on sys.path.
        sys.path.insert(0, str(self.folder.resolve()))
        try:
            cls: type | ClassSpecError = load_class(spec, self.folder)
        except ClassSpecError as e:
            cls = e
        finally:
            sys.path.remove(str(self.folder.resolve()))
        if isinstance(cls, ClassSpecError):
            if not self.imported_elsewhere(cls):
                yield "/implementation", str(cls).replace(spec, path)
            return
        mlmodel = sys.modules.get("mlserver.model")
        if mlmodel is None or not issubclass(cls, mlmodel.MLModel):
            yield (
                "/implementation",
                f"{path} is not an mlserver.MLModel subclass; subclass it, "
                "or use runtime: predictor for a plain class",
            )

    def schedule(self) -> Iterator[tuple[str, str]]:
        schedule = self.text("predictions", "schedule")
        if schedule is None:
            return
        from croniter import croniter

        fields = schedule.split()
        if schedule.strip() in CRON_MACROS:
            return
        if len(fields) != 5 or not croniter.is_valid(schedule):
            yield (
                "/predictions/schedule",
                f"{schedule!r} is not a five-field cron schedule (minute hour day-of-month "
                "month day-of-week), e.g. '0 3 * * *' for 03:00 every day, or one of "
                + ", ".join(CRON_MACROS),
            )

    def feature_columns(self) -> Iterator[tuple[str, str]]:
        columns = self.get("features", "columns")
        if isinstance(columns, list):
            seen: set[str] = set()
            for i, name in enumerate(columns):
                if name in seen:
                    yield pointer(["features", "columns", i]), f"{name!r} is listed twice"
                seen.add(name)

    def outputs(self) -> Iterator[tuple[str, str]]:
        """``predictions.outputs``: what fills the columns when no predictor class does."""
        predictions = self.get("predictions")
        if not isinstance(predictions, dict):
            return
        outputs, columns = predictions.get("outputs"), predictions.get("columns")
        runtime, key = self.get("runtime"), self.get("features", "key")
        if runtime == "predictor":
            if outputs is not None:
                yield (
                    "/predictions/outputs",
                    "only read for models of other runtimes (sklearn, xgboost, ...); a predictor "
                    "class returns the prediction columns itself: remove it",
                )
            return
        if outputs is None:
            if self.get("features") is not None:
                yield (
                    "/predictions",
                    f"runtime {runtime} needs predictions.outputs to say which model output "
                    "fills which column, e.g. outputs: {predict: label, predict_proba: "
                    "[p_setosa, p_versicolor, p_virginica]}",
                )
            return
        if not isinstance(outputs, dict) or not isinstance(columns, dict):
            return
        filled: dict[str, str] = {}
        for output, names in outputs.items():
            for i, name in enumerate([names] if isinstance(names, str) else names):
                where = ["predictions", "outputs", output] + (
                    [i] if isinstance(names, list) else []
                )
                if name in filled:
                    yield pointer(where), f"{name!r} is already filled by {filled[name]}"
                filled[name] = output
                if name == key:
                    yield pointer(where), f"{name!r} is the key (features.key); name another column"
                elif name not in columns:
                    yield (
                        pointer(where),
                        f"{name!r} is not one of predictions.columns ({', '.join(columns)}); "
                        "declare it there with its datatype or fix the name",
                    )

    def deployment(self) -> Iterator[tuple[str, str]]:
        base = self.get("deployment")
        if not isinstance(base, dict):
            return
        envs = base.get("environments")
        targets: list[tuple[list[str | int], dict[str, Any]]] = [(["deployment"], base)]
        if isinstance(envs, dict):
            targets += [
                (["deployment", "environments", env], overlay(base, patch))
                for env, patch in envs.items()
                if isinstance(patch, dict)
            ]
        for path, deployment in targets:
            replicas = deployment.get("replicas")
            if not isinstance(replicas, dict):
                continue
            low, high = replicas.get("min"), replicas.get("max")
            if isinstance(low, int) and isinstance(high, int) and low > high:
                yield (
                    pointer([*path, "replicas"]),
                    f"min {low} is more than max {high}; raise max or lower min",
                )

    def example(self) -> Iterator[tuple[str, str]]:
        example, inputs = self.get("example"), self.get("inputs")
        if not isinstance(example, dict) or not isinstance(inputs, list) or not inputs:
            return
        from mlserver.errors import MLServerError
        from mlserver.types import InferenceRequest, MetadataTensor
        from pydantic import ValidationError

        from modelyard.declarations.signature import check_request

        try:
            request = InferenceRequest.model_validate(example)
            declared = [MetadataTensor.model_validate(t) for t in inputs]
            check_request(str(self.get("name")), declared, request)
        except ValidationError:
            return  # the schema has said what is wrong with either
        except MLServerError as e:
            yield "/example", f"the example does not fit the inputs: {e}"

    def monitoring(self) -> Iterator[tuple[str, str]]:
        yield from monitoring_problems(self.data)


def check_declaration(data: dict[str, Any], path: Path) -> list[Problem]:
    """Every problem of the declaration ``data`` read from ``path``."""
    folder = path.parent
    file = str(path)
    problems = schema_problems(declaration_validator(), data, file)
    flagged = [p.pointer for p in problems]
    checks = _Checks(data, folder)
    for ptr, message in checks.all():
        # A value the schema already refused (or refused part of) is not checked again.
        if not any(is_within(ptr, f) or is_within(f, ptr) for f in flagged):
            problems.append(Problem(file, ptr, message))
    if not problems:
        # How a batch run maps the outputs, once the model itself is declared right.
        problems += [Problem(file, ptr, message) for ptr, message in checks.outputs()]
    return sorted(dict.fromkeys(problems), key=lambda p: pointer_key(p.pointer))


def declaration_problems(path: Path) -> list[Problem]:
    """Every problem of the declaration file at ``path`` (YAML errors included)."""
    try:
        data = read_declaration(path)
    except InvalidModelFolder as e:
        return e.problems
    return check_declaration(data, path)


def load_declaration(path: Path) -> dict[str, Any]:
    """The declaration at ``path``, checked: InvalidModelFolder lists every problem."""
    data = read_declaration(path)
    found = check_declaration(data, path)
    if found:
        raise InvalidModelFolder(str(path.parent), found)
    return data


def overlay(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``patch`` merged over ``base``: nested mappings merge key by key, anything else
    (lists included) replaces. ``environments`` is not carried into the result."""
    merged = {k: v for k, v in base.items() if k != "environments"}
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def example_request(folder: Path) -> InferenceRequest | None:
    """The declaration's ``example`` as a V2 request, or None when it gives none."""
    from mlserver.types import InferenceRequest

    example = read_declaration(folder / DECLARATION_FILENAME).get("example")
    return None if example is None else InferenceRequest.model_validate(example)
