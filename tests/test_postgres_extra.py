"""The PostgreSQL drivers are the `postgres` extra, not a dependency; a storage or tracking URL
whose driver is missing is one line, exit 2, saying what to install, before any store."""

import importlib.metadata
import sys

import pytest
from packaging.requirements import Requirement

from harness.cli import main

DRIVERS = {"psycopg2-binary", "psycopg"}


@pytest.mark.postgres
def test_the_drivers_are_only_in_the_postgres_extra():
    requirements = [Requirement(r) for r in importlib.metadata.requires("harness")]
    base = {r.name for r in requirements if r.marker is None}
    postgres = {
        r.name for r in requirements if r.marker and r.marker.evaluate({"extra": "postgres"})
    }
    assert not DRIVERS & base
    assert DRIVERS <= postgres
    assert "optuna-dashboard" in base


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("command", "url"),
    [
        (["study", "smoke", "--storage"], "postgresql://u:secret@h/db"),
        (["report", "smoke", "--storage"], "postgresql+psycopg2://u:secret@h/db"),
        (["dashboard", "--storage"], "postgresql+psycopg://u:secret@h/db"),
        (["ui", "--tracking-uri"], "postgresql://u:secret@h/mlflow"),
        (["study", "smoke", "--tracking-uri"], "postgresql+psycopg2://u:secret@h/mlflow"),
    ],
)
def test_a_missing_driver_says_to_install_the_extra(command, url, monkeypatch, tmp_path, capsys):
    for driver in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, driver, None)  # as if not installed
    out = tmp_path / "out"
    assert main([*command, url, "--output-dir", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"error: {command[-1]}: the database driver of postgresql+")
    assert captured.err.rstrip().endswith("pip install '.[postgres]' (make install does)")
    assert "secret" not in captured.err
    assert not out.exists()


@pytest.mark.postgres
def test_installed_drivers_pass_the_check():
    from harness.stores.urls import check_store_urls

    check_store_urls("postgresql://u@h/db", "postgresql+psycopg2://u@h/mlflow")  # no error
