"""NDJSON streams that notice when they stall, and a follower that reconnects them.

berserk's stream readers drop keep-alive lines silently, so a dead connection looks
like a quiet one. Here the stream is read from the raw response with a read timeout
of ``stream_stall_timeout``: Lichess sends a blank line every few seconds, so when
not even that arrives in time the connection is treated as dead
(:class:`~bot.errors.StreamStalled`) and :class:`StreamFollower` opens a new one,
after a backoff with jitter when the failures repeat.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests
import urllib3
from loguru import logger

from bot.client import LichessClient, backoff_delay
from bot.errors import StreamError, StreamStalled


def _is_timeout(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (TimeoutError, urllib3.exceptions.ReadTimeoutError, requests.Timeout)):
            return True
        if "timed out" in str(cur).lower():
            return True
        nxt = cur.__cause__ or cur.__context__
        if nxt is None and cur.args and isinstance(cur.args[0], BaseException):
            nxt = cur.args[0]
        cur = nxt
    return False


class NdjsonStream:
    """One open NDJSON stream; iterating yields its JSON objects.

    Keep-alive blank lines are read (they keep the stall timer at bay) but not
    yielded. Iteration ends when the server closes the stream cleanly; a stall
    raises :class:`StreamStalled`, a broken connection :class:`StreamError`.
    """

    def __init__(self, client: LichessClient, path: str, *, endpoint: str) -> None:
        self.client = client
        self.path = path
        self.endpoint = endpoint
        self.response: requests.Response | None = None
        self.session: requests.Session | None = None
        self.lines_read = 0
        self._closed = threading.Event()

    def open(self) -> NdjsonStream:
        net = self.client.net
        self.session = self.client.stream_session()
        try:
            r = self.session.get(
                self.client.url(self.path),
                stream=True,
                timeout=(net.connect_timeout, net.stream_stall_timeout),
                headers={"Accept": "application/x-ndjson"},
            )
        except requests.RequestException as exc:
            raise StreamError(
                self.client.redact(f"{self.endpoint}: cannot connect: {type(exc).__name__}: {exc}")
            ) from None
        if r.status_code != 200:
            try:
                detail = r.json().get("error", r.reason)
            except ValueError:
                detail = r.reason
            status = r.status_code
            self.close()
            if status == 429:
                self.client.note_rate_limited(self.endpoint, r, self.client.net.rate_limit_wait)
            raise StreamError(self.client.redact(f"{self.endpoint}: HTTP {status}: {detail}"), status=status)
        self.response = r
        return self

    def _chunks(self) -> Iterator[bytes]:
        assert self.response is not None
        raw = self.response.raw
        if getattr(raw, "chunked", False):
            # Chunked transfer (what Lichess sends): each chunk as soon as it arrives.
            yield from self.response.iter_content(chunk_size=None)
        else:
            while True:
                data = raw.read1(65536)
                if not data:
                    return
                yield data

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.response is None:
            self.open()
        buf = b""
        try:
            for chunk in self._chunks():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    line = line.strip()
                    self.lines_read += 1
                    if not line:
                        continue  # keep-alive
                    try:
                        event = json.loads(line)
                    except ValueError:
                        logger.warning("{}: skipped a line that is not JSON: {!r}", self.endpoint, line[:200])
                        continue
                    if isinstance(event, dict):
                        yield event
        except Exception as exc:
            if self._closed.is_set():
                return
            if _is_timeout(exc):
                raise StreamStalled(
                    f"{self.endpoint}: no data and no keep-alive for {self.client.net.stream_stall_timeout:g} s"
                ) from None
            raise StreamError(
                self.client.redact(f"{self.endpoint}: connection broke: {type(exc).__name__}: {exc}")
            ) from None
        finally:
            self._release()

    @property
    def closed_by_us(self) -> bool:
        """True when :meth:`close` was called (not when the server ended the stream)."""
        return self._closed.is_set()

    def close(self) -> None:
        """Close the stream; safe from another thread (the blocked reader wakes up)."""
        self._closed.set()
        self._release()

    def _release(self) -> None:
        if self.response is not None:
            # shutdown() wakes a reader blocked in recv() at once; close() alone may not.
            sock = getattr(getattr(self.response.raw, "connection", None), "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            try:
                self.response.close()
            except Exception:  # closing a half-dead connection can fail; nothing to do
                pass
        if self.session is not None:
            self.session.close()


class StreamFollower:
    """Keeps a stream open until ``stop`` is set or ``handle`` says it is done.

    ``on_connect()`` runs after every successful (re)connection, before its first
    event; ``handle(event)`` returns True when the follower should stop (a game
    ended). ``run()`` returns why it stopped: ``"done"``, ``"stopped"``,
    ``"not-found"`` (404: a game that is gone), ``"unauthorized"`` (401), or
    ``"gave-up"`` after ``max_failures`` failures in a row.
    """

    def __init__(
        self,
        client: LichessClient,
        path: str,
        *,
        endpoint: str,
        handle: Callable[[dict[str, Any]], bool],
        on_connect: Callable[[], None] | None = None,
        stop: threading.Event,
        max_failures: int | None = None,
    ) -> None:
        self.client = client
        self.path = path
        self.endpoint = endpoint
        self.handle = handle
        self.on_connect = on_connect
        self.stop = stop
        self.max_failures = max_failures
        self.connections = 0
        self.current: NdjsonStream | None = None
        self._lock = threading.Lock()

    def close_current(self) -> None:
        """Drop the open connection (the follower reconnects unless stopped)."""
        with self._lock:
            if self.current is not None:
                self.current.close()

    def run(self) -> str:
        failures = 0
        # A connection that lived this long was healthy: its end starts a fresh count,
        # so a server that keeps dropping streams at once gets backed off from.
        healthy_s = 10 * self.client.net.backoff_initial
        while not self.stop.is_set():
            hold = self.client.hold_left(self.endpoint)
            if hold > 0 and self.stop.wait(hold):
                break
            stream = NdjsonStream(self.client, self.path, endpoint=self.endpoint)
            opened: float | None = None
            try:
                stream.open()
                with self._lock:
                    self.current = stream
                if self.stop.is_set():
                    stream.close()
                    break
                self.connections += 1
                opened = time.monotonic()
                if self.connections > 1:
                    logger.info("{}: reconnected (connection {})", self.endpoint, self.connections)
                if self.on_connect is not None:
                    self.on_connect()
                for event in stream:
                    if time.monotonic() - opened >= healthy_s:
                        failures = 0
                    if self.handle(event):
                        stream.close()
                        return "done"
                    if self.stop.is_set():
                        break
                if self.stop.is_set():
                    break
                if stream.closed_by_us:
                    logger.info("{}: reconnecting to re-sync", self.endpoint)
                    continue
                logger.warning("{}: the server closed the stream; reconnecting", self.endpoint)
                failures = 1 if time.monotonic() - opened >= healthy_s else failures + 1
            except StreamError as exc:
                status = exc.status
                if status == 404:
                    logger.warning("{}", exc)
                    return "not-found"
                if status == 401:
                    logger.error("{}", exc)
                    return "unauthorized"
                if status == 429:
                    continue  # the hold set by NdjsonStream.open is waited out above
                logger.warning("{}; reconnecting", exc)
                healthy = opened is not None and time.monotonic() - opened >= healthy_s
                failures = 1 if healthy else failures + 1
            finally:
                stream.close()
                with self._lock:
                    self.current = None
            if self.max_failures is not None and failures >= self.max_failures:
                return "gave-up"
            # The first reconnect after a working connection is immediate; repeated
            # failures back off.
            if failures > 1:
                delay = backoff_delay(failures - 2, self.client.net, self.client.rng)
                logger.info("{}: waiting {:.2f} s before reconnecting", self.endpoint, delay)
                if self.stop.wait(delay):
                    break
        return "stopped"
