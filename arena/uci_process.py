"""One UCI engine process, driven line by line with deadlines.

The arena talks to engines itself rather than through ``chess.engine`` because it is
the referee: it must see the raw ``bestmove`` text (an illegal or garbled move is a
lost game, not an exception inside a library), time each move with its own clock,
and tell a crash from a stall.

A reader thread stamps every stdout line with ``time.monotonic()`` when it arrives,
so a move's time is ``bestmove`` arrival minus the moment ``go`` was written, not
counting the referee's own delays. stderr is drained by a second thread (a full pipe
would block the engine) and its last lines are kept for crash reports. Engines run
in their own session, so a Ctrl-C at the terminal reaches the arena, not them.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

from loguru import logger

from arena.engines import EngineSpec
from arena.errors import EngineFault, EngineStartError

_EOF = None


@dataclasses.dataclass
class GoResult:
    """What came back for one ``go``."""

    bestmove: str | None  # the raw move text; None when no bestmove came in time
    elapsed_ms: float  # go written -> bestmove read (or the wait, when none came)
    info: list[str] = dataclasses.field(default_factory=list)  # every `info` line
    ponder: str | None = None

    @property
    def info_strings(self) -> list[str]:
        return [line[len("info string ") :] for line in self.info if line.startswith("info string ")]


class UciProcess:
    """Start, configure and talk to one engine; ``restart()`` after a fault."""

    def __init__(
        self, spec: EngineSpec, *, log_file: str | Path | None = None, stderr_keep: int = 40
    ) -> None:
        self.spec = spec
        self.log_file = Path(log_file) if log_file else None
        self._log: IO[str] | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=stderr_keep)
        self._threads: list[threading.Thread] = []
        self._write_lock = threading.Lock()
        self.id_name = ""
        self.declared_options: dict[str, str] = {}
        self.starts = 0
        self.broken = False  # set after a crash or stall: restart before the next game

    # -- life cycle ---------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, *, uciok_timeout: float = 35.0, ready_timeout: float = 120.0) -> None:
        """Start the process, ``uci``/``uciok``, set the options, ``isready``/``readyok``."""
        self.close()
        self._lines = queue.Queue()
        self._stderr.clear()
        self.broken = False
        if self.log_file is not None and self._log is None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_file.open("a", encoding="utf-8")
        try:
            self._proc = subprocess.Popen(
                self.spec.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                cwd=self.spec.cwd or None,
                start_new_session=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        except OSError as exc:
            raise EngineStartError(f"{self.spec.name}: cannot start {self.spec.command!r}: {exc}") from None
        self.starts += 1
        self._note(f"# start {self.spec.command} (pid {self._proc.pid})")
        assert self._proc.stdout is not None and self._proc.stderr is not None
        # Each reader gets this start's queue: a reader of a killed process must not
        # put its end-of-file into the queue of the restarted one.
        out = threading.Thread(
            target=self._read_stdout, args=(self._proc.stdout, self._lines), daemon=True, name="uci-out"
        )
        err = threading.Thread(
            target=self._read_stderr, args=(self._proc.stderr,), daemon=True, name="uci-err"
        )
        out.start()
        err.start()
        self._threads = [out, err]
        try:
            self.send("uci")
            for line in self._read_until("uciok", time.monotonic() + uciok_timeout, what="uciok"):
                if line.startswith("id name "):
                    self.id_name = line[len("id name ") :].strip()
                elif line.startswith("option name "):
                    name = line[len("option name ") :].split(" type ")[0].strip()
                    self.declared_options[name.lower()] = line
            for name, value in self.spec.options.items():
                if name.lower() not in self.declared_options:
                    logger.warning(
                        "{}: option {!r} is not declared by the engine; sent anyway", self.spec.name, name
                    )
                self.send(f"setoption name {name} value {value}")
            self.isready(ready_timeout)
        except EngineFault as exc:
            self.kill()
            raise EngineStartError(f"{self.spec.name}: did not start: {exc}") from None

    def restart(self, *, uciok_timeout: float = 35.0, ready_timeout: float = 120.0) -> None:
        logger.info("restarting {}", self.spec.name)
        self.start(uciok_timeout=uciok_timeout, ready_timeout=ready_timeout)

    def close(self, timeout: float = 2.0) -> None:
        """``quit``, then kill if it does not leave."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                self.send("quit")
                proc.wait(timeout=timeout)
            except (EngineFault, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - a zombie we cannot reap
                logger.error("{}: process {} did not die", self.spec.name, proc.pid)
        # stdin is closed under the write lock: a game's thread may be in send() (Ctrl-C kills
        # the engines while their games go on), and closing a text stream while another thread
        # writes to it raised ValueError ("PyMemoryView_FromBuffer(): info->buf must not be
        # NULL") and ended an interrupted match with exit 1 instead of 130.
        with self._write_lock:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
            except (OSError, ValueError):
                pass
        # The readers see end-of-file once the process is gone; their streams are closed after
        # they have left them (one still blocked, a child of the engine holding the pipe open,
        # keeps its stream for the garbage collector).
        for t in self._threads:
            t.join(timeout=1.0)
        if not any(t.is_alive() for t in self._threads):
            for stream in (proc.stdout, proc.stderr):
                try:
                    if stream is not None:
                        stream.close()
                except (OSError, ValueError):
                    pass
        self._threads = []
        self._note(f"# stopped (exit code {proc.returncode})")
        self._proc = None

    def shutdown(self) -> None:
        self.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- protocol -----------------------------------------------------------------
    def send(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise EngineFault("crash", f"{self.spec.name} is not running")
        try:
            with self._write_lock:
                proc.stdin.write(line + "\n")
                proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise EngineFault("crash", self._crash_text()) from None
        self._note(f"> {line}")

    def isready(self, timeout: float) -> None:
        """``isready``; lines before ``readyok`` (a late ``bestmove`` of an earlier game) are dropped."""
        self.send("isready")
        for _ in self._read_until("readyok", time.monotonic() + timeout, what="readyok"):
            pass

    def new_game(self, ready_timeout: float) -> None:
        self.send("ucinewgame")
        self.isready(ready_timeout)

    def go(self, position: str, go: str, deadline_ms: float | None, *, stall_timeout: float) -> GoResult:
        """Send ``position`` and ``go``; wait for ``bestmove`` until ``deadline_ms`` after ``go``.

        Returns a :class:`GoResult` with ``bestmove=None`` when the deadline passed
        first. Raises :class:`EngineFault` (``crash``) when the process died, or
        (``stall``) when there is no deadline and nothing came in ``stall_timeout`` s.
        """
        self.send(position)
        self.send(go)
        sent = time.monotonic()
        limit = sent + (deadline_ms / 1000.0 if deadline_ms is not None else stall_timeout)
        info: list[str] = []
        while True:
            item = self._get(limit)
            if item is None:
                if deadline_ms is None:
                    raise EngineFault("stall", f"no bestmove within {stall_timeout:g} s")
                return GoResult(None, (time.monotonic() - sent) * 1000.0, info)
            stamp, line = item
            if line.startswith("info"):
                info.append(line)
            elif line.startswith("bestmove"):
                words = line.split()
                move = words[1] if len(words) > 1 else ""
                ponder = words[3] if len(words) > 3 and words[2] == "ponder" else None
                return GoResult(move, (stamp - sent) * 1000.0, info, ponder)

    def stop_search(self, grace: float) -> GoResult | None:
        """After a flag: ``stop`` and wait ``grace`` s for the late ``bestmove``.

        None: nothing came (a stall); :class:`EngineFault` (``crash``): the process died.
        """
        self.send("stop")
        sent = time.monotonic()
        info: list[str] = []
        while True:
            item = self._get(sent + grace)
            if item is None:
                return None
            stamp, line = item
            if line.startswith("info"):
                info.append(line)
            elif line.startswith("bestmove"):
                words = line.split()
                return GoResult(words[1] if len(words) > 1 else "", (stamp - sent) * 1000.0, info)

    # -- reading --------------------------------------------------------------------
    def _get(self, limit: float) -> tuple[float, str] | None:
        """The next stdout line before ``limit`` (monotonic), or None; EngineFault on EOF."""
        remaining = limit - time.monotonic()
        if remaining <= 0:
            try:
                item = self._lines.get_nowait()
            except queue.Empty:
                return None
        else:
            try:
                item = self._lines.get(timeout=remaining)
            except queue.Empty:
                return None
        if item is _EOF:
            self._lines.put(_EOF)  # stays at EOF for later reads
            raise EngineFault("crash", self._crash_text())
        return item

    def _read_until(self, token: str, limit: float, *, what: str) -> list[str]:
        lines: list[str] = []
        while True:
            item = self._get(limit)
            if item is None:
                raise EngineFault("stall", f"no {what} in time")
            line = item[1]
            if line.split()[:1] == [token]:
                return lines
            lines.append(line)

    def _crash_text(self) -> str:
        proc = self._proc
        code = None
        if proc is not None:
            try:
                code = proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                code = None
        text = "the engine process exited" if code is not None else "the engine closed its output"
        if code is not None:
            text += f" with code {code}"
        last = [line for line in self._stderr if line.strip()][-3:]
        if last:
            text += "; stderr: " + " | ".join(last)
        return text

    def stderr_tail(self) -> list[str]:
        return list(self._stderr)

    def _read_stdout(self, stream: IO[str], lines: queue.Queue[tuple[float, str] | None]) -> None:
        try:
            for raw in stream:
                stamp = time.monotonic()
                line = raw.strip()
                if not line:
                    continue
                self._note(f"< {line}")
                lines.put((stamp, line))
        except (OSError, ValueError):
            pass
        lines.put(_EOF)

    def _read_stderr(self, stream: IO[str]) -> None:
        try:
            for raw in stream:
                line = raw.rstrip("\n")
                self._stderr.append(line)
                self._note(f"! {line}")
        except (OSError, ValueError):
            pass

    def _note(self, text: str) -> None:
        log = self._log
        if log is not None:
            try:
                log.write(f"{time.strftime('%H:%M:%S')} {self.spec.name}: {text}\n")
                log.flush()
            except (OSError, ValueError):
                pass
