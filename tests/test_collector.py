"""`collector_paused` when pauses overlap on several threads (the report's listings)."""

from __future__ import annotations

import gc
import threading

from batcher.core.collector import collector_paused


def test_overlapping_pauses_keep_the_collector_off_until_the_last_one_ends() -> None:
    assert gc.isenabled()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def first() -> None:
        with collector_paused():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with collector_paused():
            second_in.set()
            first_out.wait(5)
            # the first pause has ended, this one has not: still off
            seen["after_first"] = gc.isenabled()
        seen["after_both"] = gc.isenabled()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == {"after_first": False, "after_both": True}
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off_after_overlapping_pauses() -> None:
    gc.disable()
    try:
        with collector_paused(), collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
