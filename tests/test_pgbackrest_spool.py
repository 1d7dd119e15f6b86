"""The batch path's status files (spool.py) and its pusher (batch.py) against a stand-in
``pgbackrest`` program that writes status files as ``archive-push:async`` does, following
a plan the test gives it. The real pgBackRest is in test_pgbackrest_batch.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from instance_manager.pgbackrest import spool
from instance_manager.pgbackrest.batch import Pusher
from instance_manager.pgbackrest.options import Config
from instance_manager.pgbackrest.runner import CommandFailed, Runner

SEGMENTS = ["000000010000000000000001", "000000010000000000000002", "000000010000000000000003"]
# Each run takes the next entry of the plan: "exit" (its status), "global" (a global.error
# text) and, per ready segment, "ok" (the .ok text) or an "error" text for its .error file.
FAKE = """#!/usr/bin/env python3
import json, os, sys
assert sys.argv[1] == "archive-push:async", sys.argv
plan_file = os.environ["FAKE_PLAN"]
plans = json.load(open(plan_file))
plan = plans.pop(0) if plans else {}
json.dump(plans, open(plan_file, "w"))
with open(plan_file + ".runs", "a") as runs:
    runs.write("run\\n")
out = os.path.join(os.environ["PGBACKREST_SPOOL_PATH"], "archive", "main", "out")
os.makedirs(out, exist_ok=True)
status = os.path.join(sys.argv[2], "archive_status")
for name in sorted(os.listdir(status)):
    wal = name[: -len(".ready")]
    if not name.endswith(".ready") or wal not in plan.get("segments", {}):
        continue
    kind, text = plan["segments"][wal]
    with open(os.path.join(out, wal + "." + kind), "w") as f:
        f.write(text)
if "global" in plan:
    with open(os.path.join(out, "global.error"), "w") as f:
        f.write(plan["global"])
sys.exit(plan.get("exit", 0))
"""


class Fake:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.program = root / "pgbackrest"
        self.program.write_text(FAKE)
        self.program.chmod(0o755)
        self.plan = root / "plan.json"
        self.pg_wal = root / "pg_wal"
        (self.pg_wal / "archive_status").mkdir(parents=True)
        for name in SEGMENTS:
            (self.pg_wal / "archive_status" / f"{name}.ready").touch()
        self.out = root / "spool" / "archive" / "main" / "out"
        env = {
            "PATH": "/usr/bin:/bin",
            "FAKE_PLAN": str(self.plan),
            "PGBACKREST_SPOOL_PATH": str(root / "spool"),
            "PGBACKREST_STANZA": "main",
        }
        self.config = Config("main", env, True, "test")

    def given(self, *plans: dict[str, object]) -> Fake:
        self.plan.write_text(json.dumps(list(plans)))
        return self

    def runs(self) -> int:
        path = self.plan.with_name("plan.json.runs")
        return len(path.read_text().splitlines()) if path.exists() else 0

    def pusher(self) -> Pusher:
        assert spool.out_dir(self.config) == self.out
        return Pusher(Runner(str(self.program)), self.config, self.pg_wal, self.out)


async def outcomes(pusher: Pusher, timeout: float = 10) -> list[BaseException | None]:
    calls = [pusher.push(name, timeout) for name in SEGMENTS]
    return list(await asyncio.gather(*calls, return_exceptions=True))


def test_one_run_answers_every_call_and_fails_only_the_failed_segment(tmp_path: Path) -> None:
    segments = {
        SEGMENTS[0]: ["ok", ""],
        SEGMENTS[1]: ["error", "45\nother contents"],
        SEGMENTS[2]: ["ok", "0\nqueue nearly full"],
    }
    fake = Fake(tmp_path).given({"segments": segments})
    first, second, third = asyncio.run(outcomes(fake.pusher()))
    assert first is None and third is None
    assert isinstance(second, CommandFailed)
    assert second.code == grpc.StatusCode.FAILED_PRECONDITION  # 45: ArchiveDuplicateError
    assert f"{SEGMENTS[1]}: other contents" in str(second)
    assert fake.runs() == 1


def test_an_old_error_file_is_cleared_and_a_stored_segment_needs_no_run(tmp_path: Path) -> None:
    fake = Fake(tmp_path).given({"segments": {name: ["ok", ""] for name in SEGMENTS[1:]}})
    fake.out.mkdir(parents=True)
    (fake.out / f"{SEGMENTS[0]}.ok").touch()  # stored before: answered from the file
    (fake.out / f"{SEGMENTS[1]}.error").write_text("25\nan earlier failure")
    (fake.out / "global.error").write_text("103\nan earlier run")
    assert asyncio.run(outcomes(fake.pusher())) == [None, None, None]
    assert fake.runs() == 1


def test_a_busy_lock_is_waited_out_then_pushed(tmp_path: Path) -> None:
    fake = Fake(tmp_path).given(
        {"exit": 50},  # another archive-push:async of the stanza holds the lock
        {"segments": {name: ["ok", ""] for name in SEGMENTS}},
    )
    assert asyncio.run(outcomes(fake.pusher())) == [None, None, None]
    assert fake.runs() == 2


def test_a_failed_run_fails_the_calls_it_did_not_store(tmp_path: Path) -> None:
    fake = Fake(tmp_path).given(
        {"segments": {SEGMENTS[0]: ["ok", ""]}, "global": "103\nno repository", "exit": 103}
    )
    first, *others = asyncio.run(outcomes(fake.pusher()))
    assert first is None
    for failure in others:
        assert isinstance(failure, CommandFailed), failure
        assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert not (fake.out / f"{SEGMENTS[1]}.ok").exists()


def test_no_status_within_the_time_is_a_deadline(tmp_path: Path) -> None:
    fake = Fake(tmp_path).given(*({"exit": 50} for _ in range(100)))

    async def main() -> BaseException | None:
        pusher = fake.pusher()
        try:
            await pusher.push(SEGMENTS[0], 0.3)
        except CommandFailed as exc:
            return exc
        finally:
            await asyncio.sleep(0.2)  # the pusher stops once nobody waits
        return None

    failure = asyncio.run(main())
    assert isinstance(failure, CommandFailed) and failure.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert fake.runs() >= 2


@pytest.mark.parametrize(
    ("content", "stored", "code", "message"),
    [
        ("", True, 0, ""),
        ("0\nwarned", True, 0, "warned"),
        ("45\nbad\nmore", False, 45, "bad\nmore"),
    ],
)
def test_status_file_contents(content: str, stored: bool, code: int, message: str) -> None:
    status = spool.parse(content, stored)
    assert (status.stored, status.code, status.message) == (stored, code, message)
