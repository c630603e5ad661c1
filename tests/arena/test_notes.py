"""What the engine's `info string` notes add to a match report: fallbacks and guard changes."""

from __future__ import annotations

from arena.referee import GameRecord, MoveRecord, read_notes
from arena.report import engine_stats


def test_guard_notes_are_read_and_counted_per_engine() -> None:
    assert read_notes(["guard: Ng5 (p 0.60) allows mate in one; played d4 (p 0.40, ...)"]).guard
    assert not read_notes(["guard cut: no time to look"]).guard  # no change of move
    assert not read_notes(["fallback: time budget spent before the model answered"]).guard
    moves = [
        MoveRecord("e2e4", "e4", 20.0, info_strings=["guard: Nc3 (p 0.5) ...; played e4 (p 0.3, ...)"]),
        MoveRecord("e7e5", "e5", 20.0, info_strings=["guard: d5 (p 0.5) ...; played e5 (p 0.3, ...)"]),
        MoveRecord("g1f3", "Nf3", 20.0, info_strings=["guard cut: no time to look"]),
        MoveRecord(
            "b8c6", "Nc6", 20.0, info_strings=["fallback: time budget spent before the model answered"]
        ),
    ]
    game = GameRecord(
        index=1, pair=0, opening=0, opening_name="", white="a", black="b", white_engine=0, black_engine=1,
        start_fen="rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 1", opening_moves=[], moves=moves,
        result="1/2-1/2", termination="max plies", reason="",
    )  # fmt: skip
    white, black = engine_stats([game], 0), engine_stats([game], 1)
    assert (white["guard_changes"], white["fallbacks"]) == (1, 0)
    assert (black["guard_changes"], black["fallbacks"]) == (1, 1)
