"""The tactical guard (search.guard): the model's candidates checked for hung material and
mate in one, within its time, and off by default."""

from __future__ import annotations

import time

import chess
import pytest

from engine.config import EngineConfig, load_engine_config
from engine.errors import ConfigError
from engine.guard import MATE_CP, guard_choice, instant_move
from engine.player import Player
from tests.engine.test_player import FakeScorer, _cfg

# 1. e4 d6 2. Nf3 e5: Ng5 leaves the knight to ...Qxg5; d4 loses nothing.
KNIGHT_HANGS = "rnbqkbnr/ppp2ppp/3p4/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 0 3"
# Scholar's mate set up: White mates with Qxf7#.
WHITE_MATES = "r1bqkbnr/pppp1ppp/2n5/4p3/2B1P3/5Q2/PPPP1PPP/RNB1K1NR w KQkq - 2 4"
# The same with Black to move: ...Nd4?? allows Qxf7#; ...Qf6 defends f7.
BLACK_TO_DEFEND = "r1bqkbnr/pppp1ppp/2n5/4p3/2B1P3/5Q2/PPPP1PPP/RNB1K1NR b KQkq - 3 4"


def _m(uci: str) -> chess.Move:
    return chess.Move.from_uci(uci)


def test_a_hung_piece_is_not_played_and_the_next_candidate_is() -> None:
    board = chess.Board(KNIGHT_HANGS)
    r = guard_choice(board, [(_m("f3g5"), 0.6), (_m("d2d4"), 0.4)], moves=5, margin_cp=150, deadline=None)
    assert r.move == _m("d2d4") and r.changed and r.complete
    assert r.probability == 0.4  # the played move's own probability, for the engine's report
    values = {look.move.uci(): look.value for look in r.looks}
    assert values["f3g5"] == -320  # the knight, for nothing
    assert values["d2d4"] == 0  # ...exd4 Nxd4: even
    assert "Ng5" in r.note and "played d4" in r.note
    assert board.fen() == KNIGHT_HANGS  # the caller's board is untouched


def test_a_move_that_allows_mate_in_one_is_dropped() -> None:
    board = chess.Board(BLACK_TO_DEFEND)
    r = guard_choice(board, [(_m("c6d4"), 0.6), (_m("d8f6"), 0.4)], moves=5, margin_cp=150, deadline=None)
    assert r.move == _m("d8f6")
    assert r.looks[0].reason == "allows mate" and r.looks[0].value == -MATE_CP + 1
    assert "allows mate in one" in r.note


def test_mate_in_one_is_played_however_low_the_model_ranks_it() -> None:
    board = chess.Board(WHITE_MATES)
    ranked = [(_m("g1e2"), 0.7), (_m("d2d3"), 0.29), (_m("f3f7"), 0.01)]
    r = guard_choice(board, ranked, moves=2, margin_cp=150, deadline=None)
    assert r.move == _m("f3f7") and r.changed
    assert r.note.startswith("guard: Qxf7# mates")
    # Only the moves the caller allows (UCI searchmoves): no mate among them, none played.
    r = guard_choice(board, ranked[:2], moves=2, margin_cp=150, deadline=None)
    assert r.move == _m("g1e2")


# White to move, Black's knight on d4: after Qd2 the quiet check ...Nf3+ forks king and queen
# (no capture, so the plain capture search does not see it); after Qd3 no check wins anything.
FORK_WITH_CHECK = "4k3/pp6/8/8/3n4/8/PP6/3Q2K1 w - - 0 1"


def test_a_fork_with_check_counts_only_with_guard_checks() -> None:
    board = chess.Board(FORK_WITH_CHECK)
    ranked = [(_m("d1d2"), 0.6), (_m("d1d3"), 0.4)]
    plain = guard_choice(board, ranked, moves=5, margin_cp=150, deadline=None)
    assert plain.move == _m("d1d2") and not plain.changed  # captures alone: both keep the material
    assert [look.value for look in plain.looks] == [580, 580]
    checks = guard_choice(board, ranked, moves=5, margin_cp=150, deadline=None, checks=True)
    assert checks.move == _m("d1d3") and checks.changed
    values = {look.move.uci(): look.value for look in checks.looks}
    assert values == {"d1d2": 580 - 900, "d1d3": 580}  # ...Nf3+ K moves ...Nxd2: the queen for nothing
    assert "after the captures and checks" in checks.note
    assert board.fen() == FORK_WITH_CHECK


def test_stalemate_counts_as_a_draw_not_as_the_material_ahead() -> None:
    # White (queen and king against king) stalemates with Qg6?? (Kh8 has no move); Qg5 does not.
    board = chess.Board("7k/8/5K2/8/8/8/8/6Q1 w - - 0 1")
    r = guard_choice(board, [(_m("g1g6"), 0.6), (_m("g1g5"), 0.4)], moves=5, margin_cp=150, deadline=None)
    assert r.looks[0].reason == "stalemates" and r.looks[0].value == 0
    assert r.move == _m("g1g5") and "stalemates" in r.note


def test_a_loss_within_the_margin_keeps_the_models_choice() -> None:
    # 1. e4 e5 2. Nf3 f5?!: exf5 wins a pawn (-100), within 150 cp of Nc6 (0).
    board = chess.Board("rnbqkbnr/pppp1ppp/8/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R b KQkq - 1 2")
    ranked = [(_m("f7f5"), 0.5), (_m("b8c6"), 0.5)]
    r = guard_choice(board, ranked, moves=5, margin_cp=150, deadline=None)
    assert r.move == _m("f7f5") and not r.changed and r.note == ""
    assert [look.value for look in r.looks] == [-100, 0]
    strict = guard_choice(board, ranked, moves=5, margin_cp=50, deadline=None)
    assert strict.move == _m("b8c6") and strict.changed  # the same pawn is too much at 50 cp
    assert "100 cp below Nc6" in strict.note


def test_only_the_first_candidates_are_looked_at() -> None:
    board = chess.Board(KNIGHT_HANGS)
    r = guard_choice(board, [(_m("f3g5"), 0.6), (_m("d2d4"), 0.4)], moves=1, margin_cp=150, deadline=None)
    assert r.move == _m("f3g5") and not r.changed and len(r.looks) == 1


def test_out_of_time_keeps_the_models_choice() -> None:
    board = chess.Board(KNIGHT_HANGS)
    ranked = [(_m("f3g5"), 0.6), (_m("d2d4"), 0.4)]
    r = guard_choice(board, ranked, moves=5, margin_cp=150, deadline=time.monotonic() - 1, max_nodes=10**6)
    assert r.move == _m("f3g5") and not r.changed and not r.complete
    # A node limit that stops after the mate scan and the first candidate: the model's choice stands.
    r = guard_choice(board, ranked, moves=5, margin_cp=150, deadline=None, max_nodes=60)
    assert r.move == _m("f3g5") and not r.complete and len(r.looks) <= 1


def test_guard_needs_candidates() -> None:
    with pytest.raises(ValueError, match="ranked moves"):
        guard_choice(chess.Board(), [], moves=5, margin_cp=150, deadline=None)


def test_player_guard_is_off_by_default_and_changes_a_hanging_move_when_on() -> None:
    prefs = {"Ng5": -0.1, "d4": -1.0}
    board = chess.Board(KNIGHT_HANGS)
    plain = Player(_cfg(), FakeScorer(prefs))
    assert plain.config.search.guard == "none"
    assert plain.choose(board).move == _m("f3g5")
    guarded = Player(_cfg(search={"guard": "material"}), FakeScorer(prefs))
    d = guarded.choose(board)
    assert d.move == _m("d2d4") and d.source == "model"
    assert any(n.startswith("guard: Ng5") for n in d.notes)
    assert d.probability is not None and d.probability < 0.5  # the played move's own probability
    s = guarded.summary()
    assert (s["guard_looks"], s["guard_changes"]) == (1, 1)


def test_player_passes_guard_checks_to_the_guard() -> None:
    prefs = {"Qd2": -0.1, "Qd3": -1.0}
    board = chess.Board(FORK_WITH_CHECK)
    captures_only = Player(_cfg(search={"guard": "material", "guard_checks": False}), FakeScorer(prefs))
    assert captures_only.choose(board).move == _m("d1d2")
    guarded = Player(_cfg(search={"guard": "material"}), FakeScorer(prefs))
    assert guarded.config.search.guard_checks  # on by default (with the guard)
    d = guarded.choose(board)
    assert d.move == _m("d1d3")
    assert any(n.startswith("guard: Qd2") and "captures and checks" in n for n in d.notes)


def test_player_guard_respects_the_moves_deadline() -> None:
    prefs = {"Ng5": -0.1, "d4": -1.0}
    guarded = Player(_cfg(search={"guard": "material"}), FakeScorer(prefs))
    d = guarded.choose(chess.Board(KNIGHT_HANGS), deadline=time.monotonic())  # already due
    assert d.move == _m("f3g5")  # no time to look: the model's choice
    assert guarded.summary()["guard_cut"] == 1


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("search.guard", "tactics", "search.guard"),
        ("search.guard", "off", "search.guard: False is not one of 'none', 'material' .YAML reads off"),
        ("search.guard_moves", "0", "guard_moves"),
        ("search.guard_margin_cp", "-1", "guard_margin_cp"),
        ("search.guard_ms", "0", "guard_ms"),
    ],
)
def test_guard_settings_are_checked(key: str, value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_engine_config(None, [f"{key}={value}"])


# -- the instant move when the model misses its budget (time.emergency: material) ----------


def test_instant_move_plays_mate_in_one_whatever_the_order() -> None:
    board = chess.Board(WHITE_MATES)
    legal = list(board.legal_moves)
    move, why = instant_move(board, legal, [m for m in legal if m != _m("f3f7")] + [_m("f3f7")])
    assert move == _m("f3f7") and why == "mates"
    assert board.fen() == WHITE_MATES  # the caller's board is untouched


def test_instant_move_keeps_a_piece_that_would_hang_and_values_a_fair_trade_at_zero() -> None:
    board = chess.Board(KNIGHT_HANGS)
    # Ng5 leaves the knight to ...Qxg5 (nothing defends g5); d4 is met by ...exd4 Nxd4: even.
    move, why = instant_move(board, [_m("f3g5"), _m("d2d4")])
    assert move == _m("d2d4") and why == "best one-ply exchange (+0 cp)"
    move, why = instant_move(board, [_m("f3g5")])
    assert move == _m("f3g5") and why == "best one-ply exchange (-320 cp)"


def test_instant_move_takes_free_material_and_promotes_to_a_queen() -> None:
    board = chess.Board("4k3/8/8/3q4/8/8/8/3RK3 w - - 0 1")  # the queen on d5 is not defended
    move, why = instant_move(board, list(board.legal_moves))
    assert move == _m("d1d5") and why == "best one-ply exchange (+900 cp)"
    board = chess.Board("8/P6k/8/8/8/8/8/K7 w - - 0 1")
    move, why = instant_move(board, list(board.legal_moves))
    assert move == _m("a7a8q") and why == "best one-ply exchange (+800 cp)"


def test_instant_move_does_not_count_a_king_taking_a_defended_piece() -> None:
    # Re7+ puts the rook beside Black's king, defended by the pawn on d6: the king cannot take it,
    # so it is worth 0 like Kg1, and comes first (counting the king as a taker would make it -500).
    board = chess.Board("4k3/8/3P4/8/8/8/8/4RK2 w - - 0 1")
    move, why = instant_move(board, [_m("e1e7"), _m("f1g1")])
    assert move == _m("e1e7") and why == "best one-ply exchange (+0 cp)"


def test_instant_move_breaks_ties_by_the_given_order_and_needs_a_move() -> None:
    board = chess.Board()
    legal = list(board.legal_moves)
    for first in (_m("g1f3"), _m("a2a3")):  # every opening move is worth 0
        assert instant_move(board, legal, [first] + [m for m in legal if m != first])[0] == first
    with pytest.raises(ValueError, match="at least one legal move"):
        instant_move(board, [])


def test_player_emergency_move_is_material_by_default_and_random_on_request() -> None:
    board = chess.Board(KNIGHT_HANGS)
    p = Player(EngineConfig(), None)
    d = p.emergency_move(board, "time budget spent before the model answered", [_m("f3g5"), _m("d2d4")])
    assert d.move == _m("d2d4") and d.source == "fallback-material"
    assert d.notes == ["fallback material: time budget spent before the model answered; d4: best one-ply exchange (+0 cp)"]
    assert p.stats.timeouts == 1 and p.stats.fallbacks == 1
    r = Player(_cfg(time={"emergency": "random"}), None)
    d = r.emergency_move(board, "model still loading", [_m("f3g5")])
    assert d.move == _m("f3g5") and d.source == "fallback-random"
    assert r.stats.timeouts == 1 and r.stats.fallbacks == 1


def test_emergency_setting_is_checked() -> None:
    assert load_engine_config(None, ["time.emergency=random"]).time.emergency == "random"
    with pytest.raises(ConfigError, match="time.emergency"):
        load_engine_config(None, ["time.emergency=best"])
