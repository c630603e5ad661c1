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
    """Milliseconds the engine may think, or None for no limit."""
    overhead = cfg.move_overhead_ms
    if params.movetime is not None:
        return float(max(cfg.min_budget_ms, params.movetime - overhead))
    own = params.wtime if turn == chess.WHITE else params.btime
    inc = params.winc if turn == chess.WHITE else params.binc
    if own is None:
        return None  # infinite, depth, nodes, mate, or a bare `go`
    own = max(own, 0)
    mtg = params.movestogo if params.movestogo and params.movestogo > 0 else cfg.moves_to_go
    base = own / mtg + cfg.increment_share * inc
    # Never plan to use more than max_share of what is left, and keep the overhead back.
    budget = min(base, own * cfg.max_share) - overhead
    return float(max(cfg.min_budget_ms, budget))
