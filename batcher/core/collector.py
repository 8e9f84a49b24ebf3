"""Pausing Python's cyclic garbage collector while many long-lived objects are made."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Pauses can overlap (the report's two listings run on threads of their own): the
# collector is switched off by the first and back on only when the last one ends.
_lock = threading.Lock()
_pauses = 0
_was_enabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector off for the block, back as it was after (also on error).

    Matching a batch's orders and writing its workbook each make a few objects per
    row, hundreds of thousands in all, none of them in a reference cycle. As they
    pile up the collector runs hundreds of times, and its older generations walk
    every object the process holds (the batch's rows, the provider's listings) for
    nothing to collect: about a third of matching's time at 100,000 orders, and half
    a second of the workbook's. Reference counting frees objects as ever. A collector
    that was off already stays off; overlapping pauses on several threads turn it
    back on when the last of them ends."""
    global _pauses, _was_enabled
    with _lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()
