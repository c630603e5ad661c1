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


def test_a_match_warns_when_an_engine_played_without_its_model(capsys) -> None:  # type: ignore[no-untyped-def]
    """An engine that cannot load its model still answers (a random legal move, 'fallback: no
    model loaded'); the match summary says so instead of rating a random mover silently."""
    from arena.cli import print_match
    from arena.report import engine_warnings

    moves = [
        MoveRecord("e2e4", "e4", 2.0, info_strings=["fallback: no model loaded"]),
        MoveRecord("e7e5", "e5", 20.0),
        MoveRecord("g1f3", "Nf3", 2.0, info_strings=["fallback: no model loaded"]),
    ]
    game = GameRecord(
        index=1, pair=0, opening=0, opening_name="", white="a", black="b", white_engine=0, black_engine=1,
        start_fen="rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 0 1", opening_moves=[], moves=moves,
        result="1/2-1/2", termination="max plies", reason="",
    )  # fmt: skip
    per_engine = {"step-6": engine_stats([game], 0), "bundled": engine_stats([game], 1)}
    assert per_engine["step-6"]["fallback_reasons"] == {"no model loaded": 2}
    warnings = engine_warnings(per_engine)
    assert len(warnings) == 1 and warnings[0].startswith(
        "step-6 played 2 of its 2 moves with no model loaded"
    )
    report = {
        "engines": [{"name": "step-6"}, {"name": "bundled"}], "wins": 0, "draws": 1, "losses": 0, "score": 0.5,
        "games": 1, "elo": {"diff": 0.0, "lower": None, "upper": None, "error": None}, "los": None,
        "terminations": {"max plies": 1}, "per_engine": per_engine,
    }  # fmt: skip
    print_match(report)
    out = capsys.readouterr().out
    assert "WARNING: step-6 played 2 of its 2 moves with no model loaded" in out
    assert "WARNING: bundled" not in out
