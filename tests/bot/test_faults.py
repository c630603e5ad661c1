"""Faults: dropped and stalled streams, 429 bursts, 500s, slow answers, restarts.

After each, the game finishes correctly, no move is lost or sent twice, and the
bot never sends a request without its token nor a move in a game not its own
(:func:`assert_clean_traffic` reads the server's request log).
"""

from __future__ import annotations

import time

from tests.bot.conftest import BOT_ID, assert_clean_traffic
from tests.bot.fake_lichess import Opponent


def _start_game(h, world, *, resign_at_ply: int = 14, delay: float = 0.15) -> str:
    world.users["alice"].opponent = Opponent(resign_at_ply=resign_at_ply, delay=delay)
    h.wait_connected()
    cid = world.send_challenge("alice", BOT_ID, color="black")  # the bot is White
    h.wait(lambda: cid in world.games and world.games[cid].ply >= 3, 15, "a few moves")
    return cid


def _finished_cleanly(h, world, cid: str, **kw) -> None:
    g = h.wait_game_over(cid)
    assert (g.status, g.winner) == ("resign", "white"), (g.status, g.winner, g.ply)
    sides = [m[2] for m in g.accepted_moves]
    assert sides == [BOT_ID, "alice"] * (len(sides) // 2) + [BOT_ID] * (len(sides) % 2), "a move was lost"
    assert_clean_traffic(world, **kw)


def test_event_stream_dropped(harness, lichess) -> None:
    world = lichess.world
    h = harness()
    cid = _start_game(h, world)
    world.drop_streams("event")
    h.wait(lambda: world.stream_connects[f"event:{BOT_ID}"] >= 2, 10, "the event stream to reconnect")
    _finished_cleanly(h, world, cid)
    # After the reconnect the bot re-listed its games.
    assert sum(1 for r in world.requests if r.path == "/api/account/playing") >= 2


def test_game_stream_dropped_mid_game(harness, lichess) -> None:
    world = lichess.world
    h = harness()
    cid = _start_game(h, world)
    for _ in range(3):
        n = world.stream_connects[f"game:{cid}"]
        world.drop_streams("game")
        h.wait(lambda n=n: world.stream_connects[f"game:{cid}"] > n, 10, "the game stream to reconnect")
        time.sleep(0.2)
    _finished_cleanly(h, world, cid)


def test_silent_streams_are_reconnected(harness, lichess) -> None:
    world = lichess.world
    h = harness()
    cid = _start_game(h, world, resign_at_ply=12)
    events, games = world.stream_connects[f"event:{BOT_ID}"], world.stream_connects[f"game:{cid}"]
    stalled_at = time.monotonic()
    world.stall_streams(5.0)  # no data, no keep-alive; the bot's stall timeout is 1 s
    h.wait(
        lambda: (
            world.stream_connects[f"event:{BOT_ID}"] > events and world.stream_connects[f"game:{cid}"] > games
        ),
        4,
        "both streams to reconnect",
    )
    assert time.monotonic() - stalled_at < 4.0
    _finished_cleanly(h, world, cid)


def test_429_burst_on_moves_waits_and_does_not_hammer(harness, lichess) -> None:
    world = lichess.world
    h = harness()
    cid = _start_game(h, world)
    fault = world.add_fault(rf"/api/bot/game/{cid}/move/", status=429, times=3)
    _finished_cleanly(h, world, cid)
    assert fault.hits == 3
    moves = [r for r in world.requests if "/move/" in r.path]
    for prev, nxt in zip(moves, moves[1:], strict=False):
        if prev.status == 429:
            assert nxt.at - prev.at >= 0.2 - 0.01, "a move was resent before move_rate_limit_wait"


def test_429_on_other_endpoints_holds_them(harness, lichess) -> None:
    world = lichess.world
    world.add_fault(r"^/api/account/playing$", status=429, times=1)
    h = harness()
    h.wait_connected()
    h.wait(
        lambda: sum(1 for r in world.requests if r.path == "/api/account/playing") >= 2,
        5,
        "the retried listing",
    )
    listing = [r for r in world.requests if r.path == "/api/account/playing"]
    assert listing[1].at - listing[0].at >= 0.4 - 0.01  # rate_limit_wait
    cid = _start_game(h, world, resign_at_ply=6)
    _finished_cleanly(h, world, cid)


def test_500s_and_dropped_answers_are_retried_with_backoff(harness, lichess) -> None:
    world = lichess.world
    world.add_fault(r"^/api/account$", status=500, times=2)
    world.add_fault(r"^/api/stream/event$", status=503, times=2)
    h = harness()
    cid = _start_game(h, world)
    world.add_fault(rf"/api/bot/game/{cid}/move/", status=502, times=1)
    world.add_fault(rf"/api/bot/game/{cid}/move/", drop=True, times=1)
    _finished_cleanly(h, world, cid)
    account = [r.at for r in world.requests if r.path == "/api/account"]
    assert len(account) == 3  # two 500s, then the answer
    assert all(b - a >= 0.02 for a, b in zip(account, account[1:], strict=False)), (
        "retried without a backoff wait"
    )
    assert sum(1 for r in world.requests if r.path == "/api/stream/event") >= 3


def test_slow_move_answer_is_not_sent_twice(harness, lichess) -> None:
    world = lichess.world
    h = harness()
    cid = _start_game(h, world)
    # The server takes the move only after 1.3 s, past the bot's 1 s move timeout.
    fault = world.add_fault(rf"/api/bot/game/{cid}/move/", delay=1.3, times=1)
    _finished_cleanly(h, world, cid)
    assert fault.hits == 1


def test_server_restart_during_a_game(harness, lichess) -> None:
    world = lichess.world
    h = harness()
    cid = _start_game(h, world, resign_at_ply=16)
    lichess.restart(downtime=1.0)
    h.wait(lambda: world.stream_connects[f"event:{BOT_ID}"] >= 2, 15, "the event stream after the restart")
    _finished_cleanly(h, world, cid)


def test_bot_restart_resumes_the_game_from_the_server(harness, lichess) -> None:
    world = lichess.world
    first = harness()
    cid = _start_game(first, world, resign_at_ply=14, delay=0.3)
    first.close()  # the bot process goes away mid-game
    ply = world.games[cid].ply
    assert world.games[cid].status == "started"
    second = harness()
    _finished_cleanly(second, world, cid)
    assert world.games[cid].ply > ply


def test_a_rejected_move_is_resynced_and_replayed_once(harness, lichess) -> None:
    world = lichess.world
    h = harness()
    cid = _start_game(h, world)
    connects = world.stream_connects[f"game:{cid}"]
    world.add_fault(
        rf"/api/bot/game/{cid}/move/",
        status=400,
        times=1,
        body={"error": "Not your turn, or game already over"},
    )
    _finished_cleanly(h, world, cid, allow_rejected_moves=1)
    assert world.stream_connects[f"game:{cid}"] > connects, "no re-sync after the rejected move"


def test_rejected_moves_are_never_retried_in_a_loop(harness, lichess) -> None:
    world = lichess.world
    h = harness()
    cid = _start_game(h, world)
    before = sum(1 for r in world.requests if "/move/" in r.path)
    world.add_fault(
        rf"/api/bot/game/{cid}/move/", status=400, times=1000, body={"error": "Piece on e2 cannot move"}
    )
    time.sleep(3.0)
    sent = sum(1 for r in world.requests if "/move/" in r.path) - before
    assert sent == 3, f"{sent} moves sent into a server that rejects them all (move_retries is 3)"
