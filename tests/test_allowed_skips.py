"""The CI skip policy (tests/conftest.py, tests/allowed_skips.py), run on a generated test
file by a pytest of its own: with CI set, an unlisted skip fails and names its reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MESSAGE = "skipped in CI but not listed in tests/allowed_skips.py"

CONFTEST = """
from tests import allowed_skips
from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport

allowed_skips.ALLOWED_SKIPS["*::test_listed"] = "listed on purpose"
"""

TESTS = """
import pytest

def test_passes():
    pass

def test_unlisted():
    pytest.skip("an unlisted reason")

@pytest.mark.skipif(True, reason="a missing install")
def test_unlisted_skipif():
    pass

def test_listed():
    pytest.skip("a listed reason")

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    raise AssertionError
"""

MODULE_SKIP = """
import pytest

pytest.skip("a whole module", allow_module_level=True)
"""


def run(tmp_path: Path, ci: str | None) -> str:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_generated.py").write_text(TESTS)
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(REPO)
    if ci is not None:
        env["CI"] = ci
    argv = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
            "-p", "no:asyncio", "--continue-on-collection-errors", str(tmp_path)]  # fmt: skip
    done = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    return done.stdout + done.stderr


def test_unlisted_skips_fail_in_ci(tmp_path: Path) -> None:
    out = run(tmp_path, "true")
    # A skip at setup (skipif) or collection becomes an error, in the call a failure.
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 2 errors" in out, out
    assert f"{MESSAGE}: Skipped: an unlisted reason" in out, out
    assert f"{MESSAGE}: Skipped: a missing install" in out, out
    assert f"{MESSAGE}: Skipped: a whole module" in out, out
    assert "a listed reason" in out, out  # -rs reports the listed skip


def test_outside_ci_a_skip_stays_a_skip(tmp_path: Path) -> None:
    out = run(tmp_path, None)
    assert "1 passed, 4 skipped, 1 xfailed" in out, out
    assert MESSAGE not in out, out
