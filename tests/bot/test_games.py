"""Full games against the local Lichess with the tiny model: every way a game ends."""

from __future__ import annotations

from pathlib import Path

import chess.pgn

from tests.bot.conftest import BOT_ID, assert_clean_traffic
from tests.bot.fake_lichess import Opponent


def test_plays_a_game_until_the_opponent_resigns_and_saves_the_pgn(harness, lichess, tmp_path: Path) -> None:
    world = lichess.world
    world.users["alice"].opponent = Opponent(resign_at_ply=8)
    h = harness()
    h.wait_connected()
    cid = world.send_challenge("alice", BOT_ID, limit_s=60, inc_s=1, color="black")  # the bot plays White
    g = h.wait_game_over(cid)
    assert g.status == "resign" and g.winner == "white"
    assert [m[2] for m in g.accepted_moves] == [BOT_ID, "alice"] * 4 + [BOT_ID]
    assert [c for c in g.chat if c[1] == BOT_ID] == [
        ("player", BOT_ID, "Hi Alice, I am MistralBot"),
        ("player", BOT_ID, "Good game!"),
    ]
    pgns = list((tmp_path / "pgn").glob("*.pgn"))
    assert len(pgns) == 1
    game = chess.pgn.read_game(pgns[0].open())
    assert game is not None and game.headers["Result"] == "1-0" and game.headers["White"] == "MistralBot"
    assert [m.uci() for m in game.mainline_moves()] == [m.uci() for m in g.board.move_stack]
    assert_clean_traffic(world)


# White (the bot) has one legal move, Qxg2, and it mates.
BOT_MATES_FEN = "8/8/8/8/8/6Q1/6q1/4rk1K w - - 0 1"
# White (the bot) has one legal move, after which Black mates in one.
BOT_MATED_FEN = "3k4/8/7K/6q1/8/5q2/8/6q1 w - - 0 1"


def test_from_position_game_ends_in_the_bots_mate(harness, lichess, tmp_path: Path) -> None:
    world = lichess.world
    h = harness(**{"challenge.variants": ["standard", "fromPosition"]})
    h.wait_connected()
    cid = world.send_challenge(
        "alice", BOT_ID, variant="fromPosition", initial_fen=BOT_MATES_FEN, color="black"
    )
    g = h.wait_game_over(cid)
    assert (g.status, g.winner) == ("mate", "white")
    assert [m.uci() for m in g.board.move_stack] == ["g3g2"]
    game = chess.pgn.read_game(next((tmp_path / "pgn").glob("*.pgn")).open())
    assert game is not None and game.headers["FEN"] == BOT_MATES_FEN and game.headers["Result"] == "1-0"
    assert_clean_traffic(world)


def test_the_bot_gets_mated_and_records_the_loss(harness, lichess, tmp_path: Path) -> None:
    world = lichess.world
    world.users["alice"].opponent = Opponent(moves="mate")
    h = harness(**{"challenge.variants": ["standard", "fromPosition"]})
    h.wait_connected()
    cid = world.send_challenge(
        "alice", BOT_ID, variant="fromPosition", initial_fen=BOT_MATED_FEN, color="black"
    )
    g = h.wait_game_over(cid)
    assert (g.status, g.winner) == ("mate", "black")
    assert h.bot.results["lost"] == 1
    game = chess.pgn.read_game(next((tmp_path / "pgn").glob("*.pgn")).open())
    assert game is not None and game.headers["Result"] == "0-1" and game.headers["Termination"] == "Normal"
    assert_clean_traffic(world)


def test_draw_offer_accepted_by_policy(harness, lichess) -> None:
    world = lichess.world
    world.users["alice"].opponent = Opponent(offer_draw_at_ply=3)
    h = harness(**{"engine.draw.accept": "always"})
    h.wait_connected()
    cid = world.send_challenge("alice", BOT_ID, color="black")
    g = h.wait_game_over(cid)
    assert g.status == "draw" and g.winner is None
    assert g.draw_answers == [(BOT_ID, "yes")]
    assert h.bot.results["drawn"] == 1
    assert_clean_traffic(world)


def test_draw_offer_declined_and_takeback_refused(harness, lichess) -> None:
    world = lichess.world
    world.users["alice"].opponent = Opponent(offer_draw_at_ply=3, takeback_at_ply=5, resign_at_ply=9)
    h = harness(**{"engine.draw.accept": "never"})
    h.wait_connected()
    cid = world.send_challenge("alice", BOT_ID, color="black")
    g = h.wait_game_over(cid)
    assert g.status == "resign" and g.winner == "white"
    assert g.draw_answers == [(BOT_ID, "no")]
    assert g.takeback_answers == [(BOT_ID, "no")]
    assert_clean_traffic(world)


def test_the_bot_resigns_by_the_engines_resign_policy(harness, lichess, tmp_path: Path) -> None:
    world = lichess.world
    # threshold 1.0 and streak 1: the model's play-on probability is always below it.
    h = harness(**{"engine.resign": {"mode": "threshold", "threshold": 1.0, "streak": 1, "min_ply": 0}})
    h.wait_connected()
    cid = world.send_challenge("alice", BOT_ID, color="black")
    g = h.wait_game_over(cid)
    assert (g.status, g.winner) == ("resign", "black")
    assert not [m for m in g.accepted_moves if m[2] == BOT_ID]
    assert h.bot.results["lost"] == 1
    assert_clean_traffic(world)


def test_the_opponent_flags_and_the_bot_wins_on_time(harness, lichess) -> None:
    world = lichess.world
    world.users["alice"].opponent = Opponent(stop_at_ply=3)  # plays one move, then lets its clock run out
    h = harness()
    h.wait_connected()
    g = world.start_game_now(BOT_ID, "alice", limit_s=2, inc_s=0)
    g = h.wait_game_over(g.id)
    assert (g.status, g.winner) == ("outoftime", "white")
    assert h.bot.results["won"] == 1
    assert_clean_traffic(world)


def test_a_short_clock_never_makes_the_bot_flag(harness, lichess) -> None:
    world = lichess.world
    world.users["alice"].opponent = Opponent(delay=0.0, resign_at_ply=41)
    h = harness(**{"move_overhead": 300})
    h.wait_connected()
    g = world.start_game_now("alice", BOT_ID, limit_s=4, inc_s=0)  # the bot plays Black with 4 s for 20 moves
    g = h.wait_game_over(g.id, timeout=60)
    assert (g.status, g.winner) == ("resign", "black"), f"{g.status} {g.winner} after {g.ply} plies"
    assert g.btime > 0
    assert_clean_traffic(world)


def test_opponent_never_moves_and_the_bot_aborts(harness, lichess) -> None:
    world = lichess.world
    world.users["alice"].opponent = Opponent(stop_at_ply=0)
    h = harness(abort_time=1.0)
    h.wait_connected()
    cid = world.send_challenge("alice", BOT_ID, color="white")  # alice is White and never moves
    g = h.wait_game_over(cid, timeout=20)
    assert g.status == "aborted" and g.ply == 0
    assert [r.path for r in world.requests if r.path.endswith("/abort")] == [f"/api/bot/game/{cid}/abort"]
    assert_clean_traffic(world)


def test_opponent_gone_the_bot_claims_victory(harness, lichess) -> None:
    world = lichess.world
    world.users["alice"].opponent = Opponent(gone_at_ply=3, claim_win_in=1)
    h = harness()
    h.wait_connected()
    cid = world.send_challenge("alice", BOT_ID, color="black")
    g = h.wait_game_over(cid, timeout=20)
    assert (g.status, g.winner) == ("timeout", "white")
    claims = [r for r in world.requests if r.path.endswith("/claim-victory")]
    assert claims and claims[-1].status == 200
    assert_clean_traffic(world)
