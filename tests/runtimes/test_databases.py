"""Declared database URLs: placeholders expanded, relative files anchored on the folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.store.databases import create_engine, describe, resolve_url


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        ("sqlite:///features.db", "sqlite:////models/gender/features.db"),
        ("sqlite:////data/features.db", "sqlite:////data/features.db"),
        ("sqlite://", "sqlite://"),
        ("duckdb:///sub/features.duckdb", "duckdb:////models/gender/sub/features.duckdb"),
        ("postgresql://ro@db/profiles", "postgresql+psycopg://ro@db/profiles"),
        ("${FEATURES_URL:-sqlite:///f.db}", "sqlite:////models/gender/f.db"),
    ],
)
def test_resolve_url(declared: str, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEATURES_URL", raising=False)
    assert str(resolve_url(declared, Path("/models/gender"))) == expected


def test_secrets_come_from_the_environment_and_stay_out_of_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FEATURES_URL", "postgresql+psycopg://ro:s3cret@db/profiles")
    url = resolve_url("${FEATURES_URL}", Path("/models/gender"))
    assert url.password == "s3cret"
    assert describe(url) == "postgresql+psycopg://ro:***@db/profiles"


def test_not_a_url() -> None:
    with pytest.raises(ValueError, match=r"'features\.db' is not a SQLAlchemy URL"):
        resolve_url("features.db", Path("/models/gender"))


def test_read_only_never_creates_a_database(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.db does not exist"):
        create_engine(resolve_url("sqlite:///absent.db", tmp_path), read_only=True)
    assert not (tmp_path / "absent.db").exists()
