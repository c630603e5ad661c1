"""Time controls and the referee's clock.

A time control is written as tournament managers write it: ``10+0.1`` (10 s for the
game, 0.1 s added per move), ``40/60`` (40 moves in 60 s, repeating), ``40/60+0.5``,
``2:30+1`` (minutes:seconds), or ``inf`` (no clock). A fixed time per move
(``movetime``) and a node or depth budget are separate limits that can stand alone
or sit beside a clock.

The arena keeps the clock itself: it measures each move from the moment ``go`` is
written to the moment ``bestmove`` is read, and never trusts an engine's own ``time``.
"""

from __future__ import annotations

import dataclasses
import re

import chess

from arena.errors import TimeControlError

_TC_RE = re.compile(r"^(?:(?P<moves>\d+)/)?(?P<base>[0-9.:]+)(?:\+(?P<inc>[0-9.]+))?$")


def _seconds(text: str, whole: str) -> float:
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) > 3:
                raise ValueError
            total = 0.0
            for p in parts:
                total = total * 60 + p
            return total
        return float(text)
    except ValueError:
        raise TimeControlError(f"time control {whole!r}: {text!r} is not a number of seconds") from None


@dataclasses.dataclass(frozen=True)
class TimeControl:
    """What one side may spend. All budgets are in milliseconds."""

    base_ms: int | None = None  # None: no clock
    inc_ms: int = 0
    moves: int = 0  # moves per period (40 in 40/60); 0: the whole game
    movetime_ms: int | None = None
    nodes: int | None = None
    depth: int | None = None

    def __post_init__(self) -> None:
        if self.base_ms is None and self.movetime_ms is None and self.nodes is None and self.depth is None:
            raise TimeControlError("no limit at all: give a clock (--tc), --movetime, --nodes or --depth")
        for name in ("base_ms", "movetime_ms", "nodes", "depth"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise TimeControlError(f"{name} must be positive, not {value}")
        if self.inc_ms < 0 or self.moves < 0:
            raise TimeControlError("increment and moves per period must be >= 0")

    @property
    def has_clock(self) -> bool:
        return self.base_ms is not None

    def describe(self) -> str:
        parts = []
        if self.base_ms is not None:
            text = f"{_fmt_s(self.base_ms)}"
            if self.moves:
                text = f"{self.moves}/{text}"
            if self.inc_ms:
                text += f"+{_fmt_s(self.inc_ms)}"
            parts.append(text)
        if self.movetime_ms is not None:
            parts.append(f"movetime {self.movetime_ms} ms")
        if self.nodes is not None:
            parts.append(f"nodes {self.nodes}")
        if self.depth is not None:
            parts.append(f"depth {self.depth}")
        return ", ".join(parts)

    def pgn_tag(self) -> str:
        """The PGN ``TimeControl`` tag: ``40/60``, ``10+0.1``, or ``-`` without a clock."""
        if self.base_ms is None:
            return "-"
        text = _fmt_s(self.base_ms)
        if self.moves:
            text = f"{self.moves}/{text}"
        if self.inc_ms:
            text += f"+{_fmt_s(self.inc_ms)}"
        return text


def _fmt_s(ms: int) -> str:
    s = ms / 1000
    return f"{s:g}"


def parse_time_control(
    tc: str | None = None,
    *,
    movetime_ms: int | None = None,
    nodes: int | None = None,
    depth: int | None = None,
) -> TimeControl:
    """Build a :class:`TimeControl` from ``--tc``, ``--movetime``, ``--nodes``, ``--depth``."""
    base_ms: int | None = None
    inc_ms = 0
    moves = 0
    text = (tc or "").strip()
    if text and text not in ("inf", "infinite", "none", "-"):
        m = _TC_RE.match(text)
        if not m:
            raise TimeControlError(
                f"time control {text!r} not understood: write BASE+INC in seconds (10+0.1), "
                "MOVES/BASE (40/60), MOVES/BASE+INC, or M:SS+INC (2:30+1)"
            )
        base_ms = round(_seconds(m.group("base"), text) * 1000)
        inc_ms = round(_seconds(m.group("inc"), text) * 1000) if m.group("inc") else 0
        moves = int(m.group("moves")) if m.group("moves") else 0
        if base_ms <= 0:
            raise TimeControlError(f"time control {text!r}: the base time must be positive")
        if m.group("moves") and moves <= 0:
            raise TimeControlError(f"time control {text!r}: moves per period must be positive")
    return TimeControl(
        base_ms=base_ms, inc_ms=inc_ms, moves=moves, movetime_ms=movetime_ms, nodes=nodes, depth=depth
    )


class Clock:
    """Both sides' clocks for one game (each side may have its own time control)."""

    def __init__(self, white: TimeControl, black: TimeControl) -> None:
        self.tc = {chess.WHITE: white, chess.BLACK: black}
        self.remaining: dict[chess.Color, float | None] = {
            c: (float(tc.base_ms) if tc.base_ms is not None else None) for c, tc in self.tc.items()
        }
        self.moves_made = {chess.WHITE: 0, chess.BLACK: 0}

    def moves_to_go(self, color: chess.Color) -> int | None:
        tc = self.tc[color]
        if not tc.has_clock or not tc.moves:
            return None
        return tc.moves - self.moves_made[color] % tc.moves

    def go_command(self, color: chess.Color) -> str:
        """The ``go`` line for ``color`` to move."""
        tc = self.tc[color]
        parts = ["go"]
        for side, key in ((chess.WHITE, "w"), (chess.BLACK, "b")):
            rem = self.remaining[side]
            # Without a clock of its own the mover sees no clock at all: engines such as
            # Stockfish read a missing btime beside a wtime as zero time left.
            if rem is None or self.remaining[color] is None:
                continue
            parts += [f"{key}time", str(max(0, int(rem)))]
            parts += [f"{key}inc", str(self.tc[side].inc_ms)]
        mtg = self.moves_to_go(color)
        if mtg is not None:
            parts += ["movestogo", str(mtg)]
        if tc.movetime_ms is not None:
            parts += ["movetime", str(tc.movetime_ms)]
        if tc.nodes is not None:
            parts += ["nodes", str(tc.nodes)]
        if tc.depth is not None:
            parts += ["depth", str(tc.depth)]
        return " ".join(parts)

    def allowance_ms(self, color: chess.Color) -> float | None:
        """How long ``color`` may think before it loses on time (None: no time limit)."""
        tc = self.tc[color]
        limits = []
        rem = self.remaining[color]
        if rem is not None:
            limits.append(rem)
        if tc.movetime_ms is not None:
            limits.append(float(tc.movetime_ms))
        return min(limits) if limits else None

    def charge(self, color: chess.Color, elapsed_ms: float) -> None:
        """Take a move's time off ``color``'s clock, then add increment and period time."""
        tc = self.tc[color]
        self.moves_made[color] += 1
        rem = self.remaining[color]
        if rem is None or tc.base_ms is None:
            return
        # A move inside the time margin but past zero leaves the clock at zero, not below.
        rem = max(0.0, rem - elapsed_ms) + tc.inc_ms
        if tc.moves and self.moves_made[color] % tc.moves == 0:
            rem += tc.base_ms
        self.remaining[color] = rem
