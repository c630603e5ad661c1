"""SIGTERM handled as Ctrl-C by the project's long runs.

A scheduler, a container or ``kill PID`` stops a process with SIGTERM, whose default
action ends it at once. The runs that already stop cleanly on Ctrl-C (``arena``'s
matches, ladders and tournaments, ``dataset selfplay``, ``serve``) enter
:func:`sigterm_as_interrupt` so that SIGTERM takes the same path.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`KeyboardInterrupt` in the main thread; the
    earlier handler is back on leaving (before an ``except KeyboardInterrupt`` around
    the block runs). Outside the main thread, where Python installs no handler, it
    does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
