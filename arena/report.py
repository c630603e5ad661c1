"""Numbers from finished games: scores, Elo, faults and the engine's own notes.

Everything here is derived from :class:`~arena.referee.GameRecord` lists, so a
resumed match reports exactly as if it had run in one go.
"""

from __future__ import annotations

import collections
import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

from arena.elo import elo_pentanomial, elo_wdl, los
from arena.referee import GameRecord, read_notes

INVALID_SAMPLES = 20


def wdl(records: list[GameRecord], engine: int) -> tuple[int, int, int]:
    """Wins, draws, losses of ``engine`` in the games it played."""
    w = d = lo = 0
    for r in records:
        if engine not in (r.white_engine, r.black_engine):
            continue
        s = r.score_of(engine)
        if s == 1.0:
            w += 1
        elif s == 0.5:
            d += 1
        else:
            lo += 1
    return w, d, lo


def pentanomial(records: list[GameRecord], engine: int, opponent: int) -> list[int]:
    """Counts of pair scores 0, 0.5, 1, 1.5, 2 of ``engine`` over complete opening pairs."""
    by_pair: dict[int, list[GameRecord]] = collections.defaultdict(list)
    for r in records:
        if {r.white_engine, r.black_engine} == {engine, opponent}:
            by_pair[r.pair].append(r)
    counts = [0, 0, 0, 0, 0]
    for games in by_pair.values():
        if len(games) == 2:
            counts[round(2 * sum(g.score_of(engine) for g in games))] += 1
    return counts


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def engine_stats(records: list[GameRecord], engine: int, *, restarts: int = 0) -> dict[str, Any]:
    """Faults, notes and move times of one engine."""
    w, d, lo = wdl(records, engine)
    faults: collections.Counter[str] = collections.Counter()
    times: list[float] = []
    moves = fallbacks = repaired = guarded = 0
    invalid: list[str] = []
    errors = 0
    fallback_reasons: collections.Counter[str] = collections.Counter()
    for r in records:
        if engine not in (r.white_engine, r.black_engine):
            continue
        if r.loser == engine and r.termination in (
            "illegal move",
            "time forfeit",
            "crash",
            "stall",
            "resignation",
        ):
            faults[r.termination] += 1
        # Who made the first game move: the side to move of the start position, flipped per book ply.
        first_white = (r.start_fen.split()[1] == "w") == (len(r.opening_moves) % 2 == 0)
        for i, m in enumerate(r.moves):
            white_moved = first_white if i % 2 == 0 else not first_white
            if (r.white_engine if white_moved else r.black_engine) != engine:
                continue
            moves += 1
            times.append(m.ms)
            notes = read_notes(m.info_strings)
            if notes.fallback is not None:
                fallbacks += 1
                fallback_reasons[_reason_kind(notes.fallback)] += 1
            invalid.extend(notes.invalid_outputs)
            repaired += notes.repaired
            guarded += notes.guard
            errors += len(notes.errors)
    games = w + d + lo
    return {
        "games": games,
        "wins": w,
        "draws": d,
        "losses": lo,
        "score": round((w + 0.5 * d) / games, 4) if games else None,
        "illegal_moves": faults["illegal move"],
        "time_losses": faults["time forfeit"],
        "crashes": faults["crash"],
        "stalls": faults["stall"],
        "restarts": restarts,
        "resignations": faults["resignation"],
        "moves": moves,
        "fallbacks": fallbacks,
        "fallback_reasons": dict(fallback_reasons),
        "invalid_outputs": len(invalid),
        "invalid_output_samples": invalid[:INVALID_SAMPLES],
        "repaired_outputs": repaired,
        "guard_changes": guarded,
        "engine_errors": errors,
        "move_time_ms": {
            "median": round(statistics.median(times), 1) if times else None,
            "p95": percentile(times, 95),
            "mean": round(statistics.fmean(times), 1) if times else None,
            "max": max(times) if times else None,
        },
    }


def engine_warnings(per_engine: dict[str, dict[str, Any]]) -> list[str]:
    """What makes a match say less than its score: an engine that played moves with no model
    (it could not load one, and its fallback chose them at random)."""
    out = []
    for name, st in per_engine.items():
        n = (st.get("fallback_reasons") or {}).get("no model loaded", 0)
        if n:
            out.append(
                f"{name} played {n} of its {st.get('moves', 0)} moves with no model loaded (its fallback "
                "chose them at random): its model did not load; the engine's log says why"
            )
    return out


def _reason_kind(reason: str) -> str:
    """Group fallback reasons: 'no legal move in 4 tries; raw output [...]' -> 'no legal move in 4 tries'."""
    return reason.split(";")[0].strip()[:80]


def terminations(records: list[GameRecord]) -> dict[str, int]:
    return dict(collections.Counter(r.termination for r in records).most_common())


def game_identity(r: GameRecord) -> tuple[int, str, tuple[str, ...], tuple[str, ...]]:
    """What makes two games the same game: the engine with White, the start, every move."""
    return (r.white_engine, r.start_fen, tuple(r.opening_moves), tuple(m.uci for m in r.moves))


def distinct_games(records: list[GameRecord]) -> list[GameRecord]:
    """The first copy of each game (``game_identity``). Deterministic engines (a model's
    constrained choice, Stockfish at fixed depth or nodes) replay the same game whenever an
    opening comes round again with the same colours, so a match of more games than twice its
    openings holds copies, which add nothing but weight."""
    seen: set[tuple[int, str, tuple[str, ...], tuple[str, ...]]] = set()
    out = []
    for r in records:
        key = game_identity(r)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _wdl_summary(w: int, d: int, lo: int) -> dict[str, Any]:
    """Games, W/D/L, score and Elo (95% interval) of one side's results."""
    n = w + d + lo
    return {
        "games": n,
        "wins": w,
        "draws": d,
        "losses": lo,
        "score": round((w + 0.5 * d) / n, 4) if n else None,
        "elo": elo_wdl(w, d, lo).to_dict(),
    }


def head_to_head(records: list[GameRecord], a: int, b: int) -> dict[str, Any]:
    """Result of ``a`` against ``b``: W/D/L, score, Elo with 95% interval, LOS, pentanomial;
    and, when some games repeat an earlier one move for move, the same over the distinct games
    (``distinct``): the interval of all games counts copies as independent games and is too narrow."""
    games = [r for r in records if {r.white_engine, r.black_engine} == {a, b}]
    w, d, lo = wdl(games, a)
    penta = pentanomial(games, a, b)
    unique = distinct_games(games)
    out = _wdl_summary(w, d, lo)
    out.update(
        {
            "los": None if los(w, lo) is None else round(los(w, lo) or 0.0, 4),
            "pentanomial": {
                "pairs": sum(penta),
                "counts": dict(zip(("0", "0.5", "1", "1.5", "2"), penta, strict=True)),
                "elo": elo_pentanomial(penta).to_dict() if sum(penta) else None,
            },
            "repeated_games": out["games"] - len(unique),
            "distinct": _wdl_summary(*wdl(unique, a)) if len(unique) < out["games"] else None,
        }
    )
    return out


def write_json(data: dict[str, Any], path: str | Path) -> None:
    """Write ``data`` atomically (a reader never sees half a report)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, p)
