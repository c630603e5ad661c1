"""Matchmaking: challenge an online bot when idle, within the daily cap, cooling down after declines."""

from __future__ import annotations

import time

from bot.matchmaking import speed_of
from tests.bot.conftest import BOT_ID, assert_clean_traffic
from tests.bot.fake_lichess import Opponent

MM = {
    "matchmaking.allow_matchmaking": True,
    "matchmaking.challenge_timeout": 0.0,
    "matchmaking.challenge_initial_time": [60],
    "matchmaking.challenge_increment": [1],
    "matchmaking.challenge_mode": "casual",
}


def test_speed_of_follows_lichess() -> None:
    assert speed_of(15, 0) == "ultraBullet"
    assert speed_of(60, 1) == "bullet"
    assert speed_of(180, 2) == "blitz"
    assert speed_of(600, 5) == "rapid"
    assert speed_of(1800, 20) == "classical"


def _challenges(world) -> list:
    return [
        r
        for r in world.requests
        if r.method == "POST" and r.path.startswith("/api/challenge/") and r.path.count("/") == 3
    ]


def test_idle_bot_challenges_an_online_bot_and_plays_it_within_the_daily_cap(harness, lichess) -> None:
    world = lichess.world
    world.users["robo"].opponent = Opponent(resign_at_ply=5)
    h = harness(**MM, **{"matchmaking.daily_challenge_limit": 1})
    h.wait(lambda: len(world.games) == 1, 15, "a game from matchmaking")
    (gid,) = world.games
    h.wait_game_over(gid)
    sent = _challenges(world)
    assert [r.path for r in sent] == ["/api/challenge/robo"]  # alice is human, the bot itself is skipped
    assert sent[0].body["clock.limit"] == "60" and sent[0].body["clock.increment"] == "1"
    assert sent[0].body["rated"] == "false"
    time.sleep(1.5)
    assert len(_challenges(world)) == 1, "the daily cap of 1 was exceeded"
    assert_clean_traffic(world)


def test_a_bot_that_declines_is_left_alone(harness, lichess) -> None:
    world = lichess.world
    world.users["robo"].accepts_challenges = False
    world.add_user("robo2", name="Robo2", title="BOT", rating=1550, opponent=Opponent(resign_at_ply=3))
    world.users["robo2"].online = False
    h = harness(**MM)
    h.wait(lambda: len(world.declines) == 1, 10, "robo to decline")
    world.users["robo2"].online = True
    h.wait(lambda: len(world.games) == 1, 10, "a game against robo2")
    assert [r.path for r in _challenges(world)] == ["/api/challenge/robo", "/api/challenge/robo2"]
    (gid,) = world.games
    h.wait_game_over(gid)
    assert world.games[gid].color_of(BOT_ID)
    assert_clean_traffic(world)


def test_no_matchmaking_unless_allowed(harness, lichess) -> None:
    world = lichess.world
    h = harness(**{"matchmaking.challenge_timeout": 0.0})
    h.wait_connected()
    time.sleep(1.0)
    assert not _challenges(world)
