"""process/distversion.py: psycopg's version modules without importlib.metadata."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from instance_manager.process import distversion

PROBE = """
import json, sys
from instance_manager.cli import prepare_imports
prepare_imports()
import psycopg, psycopg_binary
loaded = "importlib.metadata" in sys.modules
from importlib import metadata
print(json.dumps({
    "loaded": loaded,
    "ours": [psycopg.__version__, psycopg_binary.__version__],
    "metadata": [metadata.version("psycopg"), metadata.version("psycopg-binary")],
}))
"""


def test_the_daemon_imports_psycopg_without_importlib_metadata_and_same_versions() -> None:
    out = subprocess.run(
        [sys.executable, "-I", "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=60,
    )
    found = json.loads(out.stdout)
    assert found["loaded"] is False
    assert found["ours"] == found["metadata"]


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path holding package pkgx, whose version module says "file"."""
    package = tmp_path / "pkgx"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "version.py").write_text('__version__ = "file"\n')
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    for name in ("pkgx", "pkgx.version"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    distversion.register({"pkgx.version": "pkgx"})
    yield tmp_path
    for name in ("pkgx", "pkgx.version"):
        sys.modules.pop(name, None)


def dist_info(site: Path, name: str, metadata: str) -> None:
    (site / name).mkdir()
    (site / name / "METADATA").write_text(metadata)


def imported_version() -> str:
    return str(importlib.import_module("pkgx.version").__version__)


def test_the_version_comes_from_the_one_dist_info_beside_the_package(site: Path) -> None:
    dist_info(site, "pkgx_extra-9.0.dist-info", "Name: pkgx-extra\nVersion: 9.0\n")
    dist_info(site, "pkgx-1.2.3.dist-info", "Name: pkgx\nVersion: 1.2.3\n\nVersion: 7\n")
    assert imported_version() == "1.2.3"


@pytest.mark.parametrize(
    "infos",
    [
        [],  # not installed as a distribution
        [("pkgx-1.0.dist-info", "Version: 1.0\n"), ("pkgx-2.0.dist-info", "Version: 2.0\n")],
        [("pkgx-1.0.dist-info", "Name: pkgx\n\nVersion: 1.0\n")],  # no header: body only
    ],
    ids=["none", "two", "no-header"],
)
def test_anything_unclear_leaves_the_module_to_import_as_usual(
    site: Path, infos: list[tuple[str, str]]
) -> None:
    for name, metadata in infos:
        dist_info(site, name, metadata)
    assert imported_version() == "file"
