"""Signal handling for a PID 1 process.

The kernel drops signals sent to PID 1 that have no handler, so handlers are installed
before anything else happens: early ones only record the signal; once the event loop
runs, loop handlers take over and the recorded signals are replayed. Handlers never do
work themselves: they call a callback that sets an event.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNALS = (signal.SIGHUP,)


class Signals:
    def __init__(self) -> None:
        self.pending: list[signal.Signals] = []

    def install_early(self) -> None:
        def record(signum: int, _: FrameType | None) -> None:
            self.pending.append(signal.Signals(signum))

        for sig in STOP_SIGNALS + RELOAD_SIGNALS:
            signal.signal(sig, record)

    def attach(
        self,
        loop: asyncio.AbstractEventLoop,
        on_stop: Callable[[], None],
        on_reload: Callable[[], None],
    ) -> None:
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, on_stop)
        for sig in RELOAD_SIGNALS:
            loop.add_signal_handler(sig, on_reload)
        for sig in self.pending:
            (on_stop if sig in STOP_SIGNALS else on_reload)()
        self.pending.clear()

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in STOP_SIGNALS + RELOAD_SIGNALS:
            loop.remove_signal_handler(sig)
