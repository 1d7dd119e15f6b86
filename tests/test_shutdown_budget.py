"""The staged shutdown fits in stopDelay: CHECKPOINT + smart + fast + immediate together.

stopDelay is the pod's termination grace period: the kubelet kills the container when it
runs out, so a fast stage allowed the whole of it would never leave room for the
immediate stage.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

import psycopg
import pytest

from instance_manager.postgres.shutdown import IMMEDIATE_MIN, Stage, plan
from tests.daemon import Daemon, Instance, base_spec, postmaster_pid, wait_for

Start = Callable[..., Daemon]
SMART, FAST, IMMEDIATE = Stage.SMART, Stage.FAST, Stage.IMMEDIATE
SKIP_WARNING = "stopDelay is not greater than smartShutdownTimeout: skipping the smart stop"


def test_stage_signals_match_pg_ctl_modes() -> None:
    assert (SMART.value, FAST.value, IMMEDIATE.value) == (
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGQUIT,
    )


@pytest.mark.parametrize(
    ("smart", "stop_delay"),
    [(180, 1800), (5, 30), (29, 30), (30, 30), (180, 60), (0, 1800), (3, 20), (2, 6), (1, 7)],
)
def test_every_stage_using_all_it_may_still_ends_within_stop_delay(
    smart: int, stop_delay: int
) -> None:
    stop_plan = plan(smart, stop_delay)
    assert stop_plan.reserve >= min(IMMEDIATE_MIN, stop_delay)
    elapsed = stop_plan.bound(None, 0.0)  # a CHECKPOINT that takes all it may
    for stage in stop_plan.stages:
        elapsed += stop_plan.bound(stage, elapsed)
        if stage is FAST:
            assert elapsed <= stop_delay - stop_plan.reserve
    assert elapsed <= stop_delay


def test_smart_stage_keeps_the_meaning_of_smart_shutdown_timeout() -> None:
    defaults = plan(180, 1800)
    assert defaults.stages == (SMART, FAST, IMMEDIATE)
    assert defaults.bound(SMART, 0.0) == 180.0
    # The fast stage gets what is left before the immediate stage's reserve.
    assert defaults.bound(FAST, 180.0) == 1800.0 - defaults.reserve - 180.0
    assert defaults.bound(IMMEDIATE, 1800.0 - defaults.reserve) == defaults.reserve
    assert plan(0, 1800).stages == (FAST, IMMEDIATE)


@pytest.mark.parametrize(("smart", "stop_delay"), [(30, 30), (180, 60)])
def test_smart_stage_skipped_when_stop_delay_is_not_greater(
    caplog: pytest.LogCaptureFixture, smart: int, stop_delay: int
) -> None:
    with caplog.at_level(logging.WARNING, logger="instance-manager"):
        stop_plan = plan(smart, stop_delay)
    assert stop_plan.stages == (FAST, IMMEDIATE)
    assert SKIP_WARNING in caplog.messages


def test_smart_stage_leaves_the_fast_stage_half_of_the_time() -> None:
    stop_plan = plan(29, 30)  # CNPG accepts it: 29 < 30
    before_immediate = 30 - stop_plan.reserve
    assert stop_plan.bound(SMART, 0.0) == before_immediate / 2
    assert stop_plan.bound(FAST, before_immediate / 2) == before_immediate / 2


def test_a_late_stage_gets_no_time_past_the_reserve() -> None:
    stop_plan = plan(5, 30)
    assert stop_plan.bound(FAST, 29.0) == 0.0
    assert stop_plan.bound(SMART, 29.0) == 0.0
    assert stop_plan.bound(IMMEDIATE, 29.0) == IMMEDIATE_MIN  # still tried, and waited for


@pytest.mark.slow
def test_stuck_backend_the_whole_stop_ends_within_stop_delay(
    instance: Instance, daemons: Start
) -> None:
    """A stopped backend holds both the smart and the fast stage; PostgreSQL only gets rid
    of it in the immediate stage (SIGKILL after 5 s). All of that fits in stopDelay."""
    stop_delay = 20
    instance.write_config(base_spec(smartShutdownTimeout=3, stopDelay=stop_delay))
    daemon = daemons(instance)
    daemon.wait_ready()
    daemon.wait_log("configuration applied")
    pid = postmaster_pid(instance.pgdata)
    client = psycopg.connect(instance.conninfo(), autocommit=True, connect_timeout=5)
    try:
        row = client.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        backend = int(row[0])
        os.kill(backend, signal.SIGSTOP)  # stuck: answers no signal but SIGKILL
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        code = daemon.wait_exit(stop_delay + 30)
        elapsed = time.monotonic() - started
    finally:
        client.close()
    assert code == 0, daemon.tail()
    stages = [(line["mode"], line["outcome"]) for line in daemon.find("shutdown stage ended")]
    assert stages == [("smart", "timeout"), ("fast", "timeout"), ("immediate", "exited")]
    assert elapsed < stop_delay, f"the stop took {elapsed:.1f} s, stopDelay is {stop_delay} s"
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5, "the postmaster to be gone")
    assert not os.path.exists(f"/proc/{backend}")
