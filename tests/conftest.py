"""Fixtures: PostgreSQL is initialised once (by the daemon itself) and copied per test."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from tests.daemon import (
    Daemon,
    Instance,
    base_spec,
    bootstrap_template,
    chown_tree,
    copy_pgdata,
    kill_postgres,
    rmtree,
)


def make_root() -> Path:
    # Short paths: the Unix socket path must stay under 100 bytes.
    root = Path(tempfile.mkdtemp(prefix="im", dir="/tmp"))
    os.chmod(root, 0o755)
    chown_tree(root)
    return root


@pytest.fixture
def tmp_root() -> Iterator[Path]:
    root = make_root()
    yield root
    rmtree(root)


@pytest.fixture(scope="session")
def template_pgdata() -> Iterator[Path]:
    """A PGDATA bootstrapped by `instance-manager run`, then stopped cleanly."""
    root = make_root()
    yield bootstrap_template(root, base_spec())
    rmtree(root)


@pytest.fixture
def instance(tmp_root: Path, template_pgdata: Path) -> Instance:
    """A test instance whose PGDATA is a copy of the template."""
    inst = Instance(tmp_root)
    copy_pgdata(template_pgdata, inst.pgdata)
    inst.write_config(base_spec())
    return inst


@pytest.fixture
def daemons() -> Iterator[Callable[..., Daemon]]:
    """Start daemons with ``daemons(instance, *flags)``; all are stopped afterwards."""
    started: list[Daemon] = []

    def start(inst: Instance, *extra: str, prefix: tuple[str, ...] = ()) -> Daemon:
        daemon = Daemon(inst, *extra, prefix=prefix)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()
        kill_postgres(daemon.inst.pgdata)


def pytest_configure(config: pytest.Config) -> None:
    """The daemon the tests start runs the installed package: make it the code under test."""
    from tests import installed_copy

    installed_copy.sync()


# --- CI: a skip is a failure unless tests/allowed_skips.py lists it ------------------------


def _refuse_unlisted_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """With CI set, turn the skip ``report`` describes into a failure naming its reason."""
    import fnmatch

    from tests.allowed_skips import ALLOWED_SKIPS

    if not os.environ.get("CI") or not report.skipped or hasattr(report, "wasxfail"):
        return
    if any(fnmatch.fnmatchcase(report.nodeid, pattern) for pattern in ALLOWED_SKIPS):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped in CI but not listed in tests/allowed_skips.py: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _refuse_unlisted_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _refuse_unlisted_skip(report)
    return report
