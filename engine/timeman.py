"""Per-move time budget from the UCI clock.

The engine must never lose on time: every ``go`` gets a budget in milliseconds (or
none, for ``infinite``, ``depth`` or ``nodes`` without a clock), and the UCI front end
answers with an instant fallback move when the model has not answered by then.
"""

from __future__ import annotations

import dataclasses

import chess

from engine.config import TimeConfig


@dataclasses.dataclass
class GoParams:
    wtime: int | None = None
    btime: int | None = None
    winc: int = 0
    binc: int = 0
    movestogo: int | None = None
    movetime: int | None = None
    depth: int | None = None
    nodes: int | None = None
    mate: int | None = None
    infinite: bool = False
    ponder: bool = False
    searchmoves: list[str] = dataclasses.field(default_factory=list)


_INT_KEYS = ("wtime", "btime", "winc", "binc", "movestogo", "movetime", "depth", "nodes", "mate")


def parse_go(tokens: list[str]) -> tuple[GoParams, list[str]]:
    """Parse the arguments of ``go``; returns the params and a list of problems."""
    params = GoParams()
    problems: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in _INT_KEYS:
            if i + 1 >= len(tokens):
                problems.append(f"go {tok}: missing value")
                break
            raw = tokens[i + 1]
            try:
                value = int(raw)
            except ValueError:
                problems.append(f"go {tok}: {raw!r} is not an integer")
            else:
                if tok in ("winc", "binc"):
                    setattr(params, tok, max(0, value))
                else:
                    setattr(params, tok, value)
            i += 2
        elif tok == "infinite":
            params.infinite = True
            i += 1
        elif tok == "ponder":
            params.ponder = True
            i += 1
        elif tok == "searchmoves":
            i += 1
            while i < len(tokens) and tokens[i] not in _INT_KEYS + ("infinite", "ponder"):
                params.searchmoves.append(tokens[i])
                i += 1
        else:
            problems.append(f"go: unknown token {tok!r} ignored")
            i += 1
    return params, problems


def budget_ms(params: GoParams, turn: chess.Color, cfg: TimeConfig) -> float | None:
    """Milliseconds the engine waits for the model before it answers a fallback move, or
    None for no limit.

    A searching engine plans a slice of its clock (remaining / moves to go) because more
    time buys a deeper search. A language model's move costs what it costs and gets no
    better with time, while a fallback move is far weaker than the model's. So the engine
    waits as long as the clock safely allows: ``max_share`` of the remaining time, less the
    overhead. A slice would cut off a model that is merely slow on a busy machine: on the
    GPU machine's loaded CPU, a 30-layer model taking 68 ms a move at 3+0.05 under the old
    ``remaining / 30`` slice answered 45% of its moves with the fallback while its clock
    still held seconds. The share shrinks with the clock, so the flag never falls: a model
    slower than the clock allows falls back, as before, only later."""
    overhead = cfg.move_overhead_ms
    if params.movetime is not None:
        return float(max(cfg.min_budget_ms, params.movetime - overhead))
    own = params.wtime if turn == chess.WHITE else params.btime
    if own is None:
        return None  # infinite, depth, nodes, mate, or a bare `go`
    budget = max(own, 0) * cfg.max_share - overhead
    return float(max(cfg.min_budget_ms, budget))
