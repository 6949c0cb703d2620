"""A real PostgreSQL server in a temporary directory, for tests and benchmarks.

initdb + pg_ctl on a free port, trust authentication on 127.0.0.1 only, fsync off.
PostgreSQL refuses to run as root, so as root the server runs as the `postgres`
user, in a directory of its own outside pytest's (root-only) temporary tree.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.server import free_port

SERVER_USER = "postgres"
INSTALL_HINT = "install them with `apt-get install -y postgresql-15` (`make test` does)"


def find_bindir() -> Path:
    """The directory holding initdb and pg_ctl: on PATH, else Debian's versioned tree."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    for candidate in reversed(candidates):
        if (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    raise RuntimeError(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {INSTALL_HINT}")


@dataclass
class PostgresServer:
    """`start()` runs a fresh cluster; `stop()` shuts it down and removes its files."""

    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    user: str = "postgres"
    root: Path | None = None

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL (psycopg 3 driver) for ``database``."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        command = [str(find_bindir() / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.log()
            raise RuntimeError(
                f"{' '.join(command)} exited with {result.returncode}:\n"
                f"{result.stdout}{result.stderr}{log}"
            )
        return result

    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "start() first"
        return self.root / "data"

    def log(self) -> str:
        path = self.root / "server.log" if self.root else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def start(self) -> PostgresServer:
        self.root = Path(tempfile.mkdtemp(prefix="modelyard-pg-"))
        if os.geteuid() == 0:
            account = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self._run(
            "initdb", "-D", str(self.data_dir), "-U", self.user, "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses={self.host} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-o", options,
            "-l", str(self.root / "server.log"), "-w", "-t", "60", "start",
        )  # fmt: skip
        return self

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def create_database(self, name: str) -> str:
        """A new empty database (dropped first if it exists); returns its URL."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                quoted = engine.dialect.identifier_preparer.quote(name)
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
                conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
        finally:
            engine.dispose()
        return self.url(name)
