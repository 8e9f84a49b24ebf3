"""A report's listing GETs made by a forked child process, on the other core.

`batcher report` lists the provider's orders and wallet transactions (2,000 pages
at 100,000 orders) while it reads the batch's rows from the ledger. Both are CPU
bound in one process (the GIL): the HTTP of each page (building the request,
httpcore, the limiter) is most of the listing's CPU. Here a child forked for the
listing makes those GETs, through a client of its own, and hands each page's body
back over a pipe; this process decodes the pages and places them exactly as it
does when it makes the GETs itself (the same paging, the same decoders), so the
listing is the same, and reads the ledger meanwhile.

The rules the repository keeps for a forked child (see `xlsx_stream`): fork only
with no other thread alive and SIGCHLD as it comes; the child inherits the
process copy-on-write, never touches the ledger, never uses this process's
connections (the provider builds it a client of its own, with the same rate
limiter as it stood: one process makes the listing's GETs at a time, so its
pace is the in-process listing's), and leaves by `os._exit`. Anything the child
cannot answer (an error, a refused body, the child gone) is answered by `None`:
the caller then makes that GET itself, as it would have, and every later one
(`retired`), so errors come out of the parent exactly as they always did.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
import threading
from collections.abc import Callable, Mapping
from contextlib import suppress
from queue import SimpleQueue
from typing import Any, NoReturn, Protocol

#: A GET made in the child: (path, query) -> the success body, or None (the caller makes it)
ChildGet = Callable[[str, Mapping[str, Any]], bytes | None]

_HEADER = struct.Struct("<Q")
#: a reply frame's first byte: a body follows, or the caller makes the GET itself
_BODY, _NONE = b"B", b"N"


class ForksPages(Protocol):
    """A provider whose listing GETs a `ListingChild` can make (duck-typed)."""

    list_workers: int

    def child_pages(self) -> Callable[[], ChildGet]: ...

    def use_child_pages(self, get: ChildGet | None) -> None: ...


def may_fork() -> bool:
    """Linux, no other thread, and SIGCHLD as it comes: a child may be forked and waited for."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return False
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        threads = threading.active_count()
    return threads == 1 and signal.getsignal(signal.SIGCHLD) in (signal.SIG_DFL, None)


class ListingChild:
    """A forked child making GETs for up to `slots` listing threads at once (as many
    as the two listings read side by side have workers).

    `get` is called from the listing's threads: each takes a free slot (a pair of
    pipes to one of the child's threads), sends the path and query, and waits for
    the body. `close` ends the child; a child that died is reaped there too."""

    def __init__(self, pid: int, slots: list[tuple[int, int]]) -> None:
        self._pid: int | None = pid
        self._slots = slots
        self._free: SimpleQueue[int] = SimpleQueue()
        for index in range(len(slots)):
            self._free.put(index)
        self.retired = False  # a GET it could not answer: the caller makes the rest itself
        self._lock = threading.Lock()
        self._busy = 0  # GETs waiting on the child
        self._closing = False
        self.answered = 0  # GETs answered by the child (tests look)

    @classmethod
    def start(cls, provider: object) -> ListingChild | None:
        """The child making `provider`'s listing GETs, told to the provider; None when
        the provider cannot use one or no child can be forked here and now."""
        make = getattr(provider, "child_pages", None)
        use = getattr(provider, "use_child_pages", None)
        workers = getattr(provider, "list_workers", 0)
        if make is None or use is None or not isinstance(workers, int) or workers < 1:
            return None
        if not may_fork():
            return None
        serve = make()
        pipes: list[int] = []
        try:
            # the orders and the transactions are listed side by side, each with its workers
            for _ in range(2 * workers):
                pipes.extend(os.pipe())  # request read, request write
                pipes.extend(os.pipe())  # reply read, reply write
            pid = os.fork()
        except OSError:  # no process to be had: the listing makes its own GETs
            for fd in pipes:
                os.close(fd)
            return None
        quads = [tuple(pipes[i : i + 4]) for i in range(0, len(pipes), 4)]
        if pid == 0:  # the child: never returns
            _child_main(
                serve, [(q[0], q[3]) for q in quads], [q[1] for q in quads] + [q[2] for q in quads]
            )
        for q in quads:
            os.close(q[0])
            os.close(q[3])
        child = cls(pid, [(q[1], q[2]) for q in quads])
        use(child.get)
        return child

    def get(self, path: str, params: Mapping[str, Any]) -> bytes | None:
        """The body of a successful GET of `path` with `params`, or None: the caller
        makes it itself (and, with `retired` set, every later one)."""
        with self._lock:
            if self.retired:
                return None
            self._busy += 1
        index = self._free.get()
        request, reply = self._slots[index]
        try:
            _send(request, pickle.dumps((path, dict(params)), protocol=pickle.HIGHEST_PROTOCOL))
            kind = _read_exactly(reply, 1)
            if kind == _BODY:
                body = _read_frame(reply)
                with self._lock:
                    self.answered += 1
                return body
        except (OSError, EOFError):
            pass  # the child is gone
        finally:
            self._free.put(index)
            self._done()
        self.retired = True
        return None

    def _done(self) -> None:
        with self._lock:
            self._busy -= 1
            last = self._busy == 0 and self._closing
        if last:
            self._close_pipes()

    def close(self) -> None:
        """End the child (at once: a GET it is making is of no further use) and reap it.
        A GET still waiting on it then answers None; the pipes are closed once none is."""
        if self._pid is not None:
            with suppress(OSError):
                os.kill(self._pid, signal.SIGKILL)
            with suppress(OSError):
                os.waitpid(self._pid, 0)
            self._pid = None
        with self._lock:
            self.retired = True
            self._closing = True
            idle = self._busy == 0
        if idle:
            self._close_pipes()

    def _close_pipes(self) -> None:
        slots, self._slots = self._slots, []
        for request, reply in slots:
            with suppress(OSError):
                os.close(request)
            with suppress(OSError):
                os.close(reply)


def _child_main(
    serve: Callable[[], ChildGet], slots: list[tuple[int, int]], theirs: list[int]
) -> NoReturn:
    """The child's whole life: a thread per slot answering GETs until its pipe closes,
    then `os._exit`, whatever happens."""
    code = 1
    try:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)  # the parent's to act on: it ends the child
        for fd in theirs:
            os.close(fd)
        get = serve()
        threads = [
            threading.Thread(target=_answer, args=(get, request, reply), daemon=True)
            for request, reply in slots
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        code = 0
    finally:
        os._exit(code)


def _answer(get: ChildGet, request: int, reply: int) -> None:
    """One slot's GETs, one after another, until the parent closes its end. Whatever
    goes wrong, the slot's pipes are closed as it ends: the parent reads the end of
    them and makes the GET itself, never waiting on a slot nobody answers."""
    try:
        while True:
            try:
                path, params = pickle.loads(_read_frame(request))
            except EOFError:
                return  # the parent is done with the listing
            try:
                body = get(path, params)
            except Exception:  # made again by the parent, which says what went wrong
                body = None
            if body is None:
                _send_raw(reply, _NONE)
            else:
                _send_raw(reply, _BODY + _HEADER.pack(len(body)))
                _send_raw(reply, body)
    except BaseException:  # the parent sees the slot end and goes on alone
        pass
    finally:
        for fd in (request, reply):
            with suppress(OSError):
                os.close(fd)


def _send(fd: int, data: bytes) -> None:
    _send_raw(fd, _HEADER.pack(len(data)) + data)


def _send_raw(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_frame(fd: int) -> bytes:
    (length,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    return _read_exactly(fd, length)


def _read_exactly(fd: int, length: int) -> bytes:
    if length == 0:
        return b""
    first = os.read(fd, length)
    if len(first) == length:
        return first
    parts = [first]
    got = len(first)
    while got < length:
        if not first:
            raise EOFError("the listing child is gone")
        first = os.read(fd, min(length - got, 1 << 20))
        parts.append(first)
        got += len(first)
    return b"".join(parts)
