"""A model folder's own Python packages: one environment per distinct requirements.

A folder's ``requirements.txt`` (or the file ``python.requirements`` names) is
installed with uv into a virtual environment of its own, kept in a cache
(``~/.cache/modelyard/envs/<hash>``, or ``$MODELYARD_ENVS_DIR``) under the hash of what
decides its contents: the requirements, the Python version and the server's own
packages. A second folder with the same requirements reuses it; a build of a hash
already under way elsewhere is waited for (a file lock), and an environment appears
under its name only once complete (built beside it, then renamed).

The environment holds the folder's packages alone. The model's worker process runs its
Python with the environment's site-packages first and the server's after them, so the
folder's pins win and MLServer and the runtimes still import. Everything the folder
does not pin is resolved with the server's versions as constraints, and the packages
the worker shares with the server process (MLServer, pydantic, numpy: requests and
answers cross between them pickled) are held to the server's versions even when the
folder pins them: such a pin fails with the resolver's own message.

Package indexes come from the server's configuration (uv's own: ``UV_INDEX_URL``,
``UV_DEFAULT_INDEX``, ``uv.toml``; or ``$MODELYARD_ENV_INDEX_URL``), never from a
model folder: index, find-links and trusted-host lines in a folder's requirements are
refused.

A package's own build code (a setup.py) never writes a model folder: the build's working
directory and HOME are a fresh directory beside the environment, it reads a copy of the
requirements, and a server running as root runs uv as nobody (see ``_unprivileged``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pwd
import shutil
import site
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import distributions
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

if TYPE_CHECKING:
    from mlserver.settings import ModelSettings

logger = logging.getLogger(__name__)

REQUIREMENTS_FILENAME = "requirements.txt"
ENVS_DIR_VAR = "MODELYARD_ENVS_DIR"
INDEX_URL_VAR = "MODELYARD_ENV_INDEX_URL"
# Bumped when the layout of an environment changes, so old ones are not reused.
FORMAT = "1"
COMPLETE_MARKER = "modelyard-env.json"
LAST_USED = ".last-used"
# Shared by the server process and the model's worker: held to the server's versions.
SHARED = ("mlserver", "pydantic", "pydantic-core", "numpy", "modelyard")
# Options a model folder may not give: where packages come from is the server's choice.
REFUSED_OPTIONS = (
    "-i",
    "--index-url",
    "--extra-index-url",
    "--no-index",
    "-f",
    "--find-links",
    "--trusted-host",
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "-e",
    "--editable",
)
# The key of the model settings' `extra.modelyard` naming the requirements file.
SETTINGS_KEY = "python"


class EnvironmentBuildError(Exception):
    """A folder's environment cannot be built; the message says why and what to do."""


def envs_dir() -> Path:
    """Where environments are kept."""
    configured = os.environ.get(ENVS_DIR_VAR)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "modelyard" / "envs"


def requirements_file(folder: Path, declared: str | None = None) -> Path | None:
    """The requirements file of ``folder``: the one declared, else a bare
    requirements.txt, else None."""
    if declared:
        return folder / declared
    bare = folder / REQUIREMENTS_FILENAME
    return bare if bare.is_file() else None


def declared_requirements(settings: ModelSettings) -> str | None:
    extra = (settings.parameters.extra if settings.parameters else None) or {}
    environment = (extra.get("modelyard") or {}).get(SETTINGS_KEY) or {}
    value = environment.get("requirements")
    return value if isinstance(value, str) else None


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) with continuations joined and comments dropped."""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            yield start, line
    if pending.strip():
        yield start, pending.strip()


def check_requirements(path: Path) -> tuple[str, list[str]]:
    """The requirements text and the names it pins; refuses what a folder may not say."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise EnvironmentBuildError(
            f"{path} does not exist; add it or fix python.requirements"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise EnvironmentBuildError(
            f"{path} cannot be read ({e}); make it a readable text file"
        ) from None
    names: list[str] = []
    for number, line in _logical_lines(text):
        option = line.split()[0].split("=")[0]
        if not option.startswith("--"):
            option = option[:2]  # -i URL, -iURL, -fDIR
        if option in REFUSED_OPTIONS:
            raise EnvironmentBuildError(
                f"{path} line {number}: {option} is not taken from a model folder: package "
                f"indexes and files come from the server's configuration (UV_INDEX_URL, "
                f"uv.toml or ${INDEX_URL_VAR}); remove the line and list the packages here"
            )
        if line.startswith("-"):
            continue  # --require-hashes, --pre, --only-binary ...: uv takes them as pip does
        spec = line.split(" --hash")[0].split(";")[0].strip() if "@" not in line else line
        try:
            names.append(canonicalize_name(Requirement(spec).name))
        except InvalidRequirement as e:
            raise EnvironmentBuildError(
                f"{path} line {number}: {line!r} is not a requirement ({e}); "
                "write one package per line, e.g. scikit-learn==1.5.2"
            ) from None
    return text, names


@lru_cache(maxsize=1)
def site_directories() -> list[str]:
    """Where this interpreter installs packages: its site directories (a virtualenv's
    own, or the system's), and the user's when it reads them."""
    directories = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        directories.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(directories) if os.path.isdir(d)]


def server_packages() -> tuple[tuple[str, str], ...]:
    """The server's own installed distributions, (name, version), sorted."""
    found: dict[str, str] = {}
    # Over the interpreter's site directories, not sys.path: what a process has put on
    # its import path (a model folder, a worker's environment) is not the server's, and
    # the server, `modelyard envs build` and `modelyard image` must agree on a hash.
    for dist in distributions(path=site_directories()):
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist.version)
    return tuple(sorted(found.items()))


def content_hash(text: str) -> str:
    """What decides an environment's contents, hashed."""
    digest = hashlib.sha256()
    digest.update(f"modelyard-env {FORMAT}\n".encode())
    digest.update(f"{sys.implementation.name} {sys.version_info[:3]} {sys.prefix}\n".encode())
    for name, version in server_packages():
        digest.update(f"{name}=={version}\n".encode())
    digest.update(b"--\n")
    digest.update(text.strip().encode())
    return digest.hexdigest()[:24]


def constraints(pinned: list[str]) -> str:
    """The server's versions of everything the folder does not pin (and always of the
    packages the worker shares with the server process)."""
    own = set(pinned) - set(SHARED)
    return "".join(
        f"{name}=={version}\n"
        for name, version in server_packages()
        if name not in own and not version.endswith("+editable")
    )


@dataclass
class Env:
    """One built environment."""

    path: Path

    @property
    def hash(self) -> str:
        return self.path.name

    def meta(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.path / COMPLETE_MARKER).read_text())
            return data
        except (OSError, ValueError):
            return {}

    def site_packages(self) -> Path:
        return next(iter(sorted(self.path.glob("lib/python*/site-packages"))))

    def last_used(self) -> float:
        for name in (LAST_USED, COMPLETE_MARKER):
            with contextlib.suppress(OSError):
                return (self.path / name).stat().st_mtime
        return 0.0

    def touch(self) -> None:
        with contextlib.suppress(OSError):
            (self.path / LAST_USED).touch()

    def size(self) -> int:
        return sum(
            p.stat().st_size for p in self.path.rglob("*") if p.is_file() and not p.is_symlink()
        )


def _uv() -> str:
    """uv's binary, from the PyPI package `uv` installed with modelyard."""
    try:
        from uv import find_uv_bin
    except ImportError:
        found = shutil.which("uv")
        if found:
            return found
        raise EnvironmentBuildError("uv is not installed; pip install uv") from None
    return str(find_uv_bin())


class _Progress:
    """A line on a terminal, log lines elsewhere."""

    def __init__(self, what: str):
        self.what = what
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()

    def begin(self) -> None:
        if self.tty:
            sys.stderr.write(f"building {self.what} ...")
            sys.stderr.flush()
        logger.info("building %s", self.what)

    def end(self, ok: bool) -> None:
        took = time.monotonic() - self.start
        if self.tty:
            sys.stderr.write(
                f"\rbuilding {self.what}: {'done' if ok else 'FAILED'} in {took:.1f} s\n"
            )
        logger.info("built %s in %.1f s" if ok else "building %s failed after %.1f s",
                    self.what, took)  # fmt: skip


def _run(
    args: list[str], env: Mapping[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=dict(env), cwd=cwd, check=False)


BUILD_USER = "nobody"
CAP_DAC_READ_SEARCH = 2


def _unprivileged() -> list[str]:
    """The prefix running a build command as ``nobody`` when the server runs as root
    (empty otherwise): a package's own build code (a setup.py) may then write only into
    the environment being built, never into a model folder or the server's packages.
    It keeps the right to read and search directories (CAP_DAC_READ_SEARCH, where the
    server holds it) so it reaches the server's Python wherever that is installed."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise EnvironmentBuildError(
            "the server runs as root and setpriv (util-linux) is not installed: an "
            "environment is never built as root; install util-linux or run as another user"
        )
    user = pwd.getpwnam(BUILD_USER)
    prefix = [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    bounding = 0
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        bounding = int(next(line for line in status if line.startswith("CapBnd:")).split()[1], 16)
    if bounding & (1 << CAP_DAC_READ_SEARCH):
        prefix += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    return prefix


def _give(path: Path, uid: int, gid: int) -> None:
    """``path`` and everything under it owned by uid:gid (links themselves, not followed)."""
    os.lchown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


def build(requirements: Path, cache: Path | None = None, label: str = "") -> Env:
    """The environment for ``requirements``, built unless it is there already."""
    text, pinned = check_requirements(requirements)
    cache = cache or envs_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / content_hash(text)
    env = Env(target)
    if (target / COMPLETE_MARKER).is_file():
        env.touch()
        return env
    with open(cache / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another build of this hash: wait for it
        if (target / COMPLETE_MARKER).is_file():
            env.touch()
            return env
        _build_into(target, requirements, text, pinned, label or str(requirements.parent))
    env.touch()
    return env


def _build_into(target: Path, requirements: Path, text: str, pinned: list[str], label: str) -> None:
    # The build happens in a directory of its own beside the target: its working
    # directory and HOME are in there (never the model folder), the requirements are a
    # copy, and when the server is root it runs as nobody, owning only this directory.
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    progress = _Progress(f"environment {target.name} for {label}")
    progress.begin()
    ok = False
    try:
        uv = _uv()
        as_builder = _unprivileged()
        venv, home = tmp / "env", tmp / "home"
        home.mkdir(parents=True)
        shutil.copyfile(requirements, home / REQUIREMENTS_FILENAME)
        (home / "constraints.txt").write_text(constraints(pinned))
        run_env = dict(os.environ)
        run_env.pop("VIRTUAL_ENV", None)
        run_env.setdefault("XDG_CONFIG_HOME", str(Path.home() / ".config"))  # uv.toml
        run_env["HOME"] = str(home)
        if as_builder:
            # uv's cache of downloads, kept between builds, is the build user's own.
            uv_cache = target.parent / ".uv-cache-unprivileged"
            uv_cache.mkdir(mode=0o700, exist_ok=True)
            user = pwd.getpwnam(BUILD_USER)
            if uv_cache.stat(follow_symlinks=False).st_uid != user.pw_uid:
                _give(uv_cache, user.pw_uid, user.pw_gid)
            run_env["UV_CACHE_DIR"] = str(uv_cache)
            _give(tmp, user.pw_uid, user.pw_gid)
        made = _run([*as_builder, uv, "venv", "--quiet", "--relocatable", "--python",
                     sys.executable, str(venv)], run_env, cwd=home)  # fmt: skip
        if made.returncode:
            raise EnvironmentBuildError(f"creating the environment failed:\n{made.stderr.strip()}")
        args = [*as_builder, uv, "pip", "install", "--quiet", "--python",
                str(venv / "bin" / "python"), "-r", REQUIREMENTS_FILENAME,
                "-c", "constraints.txt"]  # fmt: skip
        index = os.environ.get(INDEX_URL_VAR)
        if index:
            args += ["--index-url", index]
        installed = _run(args, run_env, cwd=home)
        if installed.returncode:
            raise EnvironmentBuildError(
                f"installing {requirements} failed (uv pip install; the server's own "
                f"versions of the packages the folder does not pin, and of "
                f"{', '.join(SHARED[:-1])} always, are constraints):\n" + installed.stderr.strip()
            )
        if as_builder:  # the server's again, not writable by the build user any more
            _give(venv, os.geteuid(), os.getegid())
        for name in (REQUIREMENTS_FILENAME, "constraints.txt"):
            shutil.copyfile(home / name, venv / name)
        meta = {
            "hash": target.name,
            "requirements": text,
            "python": sys.version.split()[0],
            "built_for": label,
            "built_at": time.time(),
        }
        # The server's packages after the folder's own, its .pth files (an editable
        # install's finder) processed as in the server, for the worker's interpreter.
        server_site = [p for p in site.getsitepackages() if Path(p).is_dir()]
        site_dir = next(iter(sorted(venv.glob("lib/python*/site-packages"))))
        (site_dir / "zz-modelyard-server.pth").write_text(
            "".join(f"import site; site.addsitedir({p!r})\n" for p in server_site)
        )
        (venv / COMPLETE_MARKER).write_text(json.dumps(meta, indent=2) + "\n")
        os.rename(venv, target)
        ok = True
    finally:
        progress.end(ok)
        shutil.rmtree(tmp, ignore_errors=True)


def prepare(folder: Path, settings: ModelSettings, cache: Path | None = None) -> Env | None:
    """Build ``folder``'s environment when it has requirements and point ``settings`` at
    it (``parameters.environment_path``), so the model is served in a worker on it."""
    requirements = requirements_file(folder, declared_requirements(settings))
    if requirements is None:
        return None
    env = build(requirements, cache, label=f"{settings.name} ({folder})")
    if settings.parameters is None:
        from mlserver.settings import ModelParameters

        settings.parameters = ModelParameters()
    settings.parameters.environment_path = str(env.path)
    return env


def folder_requirements(folder: Path) -> Path | None:
    """The requirements file of a model folder, as its settings say or a bare one."""
    from modelyard.declarations.folders import settings_dict

    data = settings_dict(folder)[1]
    extra = (data.get("parameters") or {}).get("extra") or {}
    declared = ((extra.get("modelyard") or {}).get(SETTINGS_KEY) or {}).get("requirements")
    return requirements_file(folder, declared if isinstance(declared, str) else None)


def folder_hash(folder: Path) -> str | None:
    """The hash of the environment ``folder`` would use (None: it has no requirements)."""
    requirements = folder_requirements(folder)
    if requirements is None:
        return None
    return content_hash(check_requirements(requirements)[0])


def env_paths(environment_path: str) -> list[str]:
    """The import path of a model's worker on ``environment_path``: its own packages
    first, the server's after them."""
    return [str(Env(Path(environment_path)).site_packages()), *sys.path]


def installed_envs(cache: Path | None = None) -> list[Env]:
    cache = cache or envs_dir()
    if not cache.is_dir():
        return []
    return [
        Env(p)
        for p in sorted(cache.iterdir())
        if not p.name.startswith(".") and (p / COMPLETE_MARKER).is_file()
    ]


def prune(
    keep: set[str] | None, older_than_days: float | None, cache: Path | None = None
) -> list[tuple[Env, str]]:
    """Remove the environments no folder in ``keep`` uses (when given) or unused for
    ``older_than_days``; returns each removed and why. Half-built leftovers go too."""
    removed: list[tuple[Env, str]] = []
    now = time.time()
    for env in installed_envs(cache):
        why = None
        idle_days = (now - env.last_used()) / 86400
        if keep is not None and env.hash not in keep:
            why = "used by no model folder"
        elif keep is None and older_than_days is not None and idle_days > older_than_days:
            why = f"not used for {idle_days:.1f} days"
        if why:
            shutil.rmtree(env.path, ignore_errors=True)
            removed.append((env, why))
    root = cache or envs_dir()
    for leftover in root.glob(".tmp-*") if root.is_dir() else []:
        with open(root / f".{leftover.name.split('-')[1]}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # still being built
            shutil.rmtree(leftover, ignore_errors=True)
    return removed


IN_ENV_VAR = "MODELYARD_IN_ENV"


def exec_in_environment(folder: Path, argv: list[str]) -> None:
    """For a command on one model folder (a batch run): when the folder has
    requirements, replace this process by the same command on the folder's environment's
    interpreter (its packages first, the server's after them, as a serving worker's),
    building the environment first; returns at once when there is none or when already
    there."""
    inside = os.environ.get(IN_ENV_VAR)
    if inside and Path(sys.prefix).name == inside:
        return  # (its hash, computed here, would count the environment's own packages)
    requirements = folder_requirements(folder)
    if requirements is None:
        return
    env = build(requirements, label=str(folder))
    python = str(env.path / "bin" / "python")
    logger.info("running in environment %s: %s", env.hash, " ".join(argv))
    os.execve(python, [python, "-m", "modelyard", *argv], {**os.environ, IN_ENV_VAR: env.hash})
