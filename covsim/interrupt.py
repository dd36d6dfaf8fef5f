"""Ctrl-C and SIGTERM that cannot be lost.

Python raises the exception of a signal handler at whatever bytecode runs next. If that is a
garbage-collector callback (JAX registers one) or a ``__del__``, the exception is printed as
"Exception ignored in ..." and the program carries on: a Ctrl-C that lands there would let a
sweep run to its end and exit 0. So the handlers installed by `handled` also record the
signal, and long loops call `check()` at safe points (the sweep, between cells), which raises
it again; the CLI also asks `received()` when a command returns.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that cleanup (finally, with) runs as on Ctrl-C."""


_received: int | None = None


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated


def _handler(signum, frame) -> None:
    global _received
    _received = signum
    _raise_for(signum)


def received() -> int | None:
    """The signal number caught since `handled` was entered, or None."""
    return _received


def check() -> None:
    """Raise the interrupt again if one was caught (and perhaps swallowed) since `handled`."""
    if _received is not None:
        _raise_for(_received)


@contextmanager
def handled() -> Iterator[None]:
    """Within: SIGTERM raises `Terminated`; SIGINT raises KeyboardInterrupt unless it was
    ignored on entry (a background job of a non-interactive shell keeps ignoring it, as Python
    itself does); both are recorded for `check`. Outside the main thread: nothing changes."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = None
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _received = None
