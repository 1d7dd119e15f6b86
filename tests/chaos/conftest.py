"""The chaos tier runs only when asked for (``-m chaos`` or ``CHAOS=1``): it takes minutes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_root
from tests.daemon import base_spec, bootstrap_template, rmtree

HERE = Path(__file__).resolve().parent
WAL_SEGMENT_MB = 1  # small segments: hundreds of switches fit a small tmpfs


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "chaos" in (config.getoption("markexpr") or "") or os.environ.get("CHAOS") == "1":
        return
    chaos = [i for i in items if HERE in Path(str(i.path)).resolve().parents]
    if chaos:
        config.hook.pytest_deselected(items=chaos)
        items[:] = [i for i in items if i not in chaos]


@pytest.fixture(scope="module")
def chaos_template() -> Iterator[Path]:
    """A PGDATA bootstrapped by `instance-manager run` with 1 MB WAL segments, stopped cleanly."""
    root = make_root()
    yield bootstrap_template(
        root, base_spec(bootstrap={"initdb": {"walSegmentSize": WAL_SEGMENT_MB}})
    )
    rmtree(root)
