"""Challenges: each decline carries the Lichess reason that fits; the concurrency limit holds."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bot.challenges import DECLINE_REASONS, check_challenge
from bot.config import ChallengeConfig
from tests.bot.conftest import BOT_ID, assert_clean_traffic
from tests.bot.fake_lichess import Opponent


def challenge(**kw: Any) -> dict[str, Any]:
    """A ChallengeJson as the spec shapes it."""
    limit, inc = kw.pop("limit", 180), kw.pop("inc", 2)
    ch: dict[str, Any] = {
        "id": "H9fIRZUk",
        "url": "https://lichess.org/H9fIRZUk",
        "status": "created",
        "challenger": {"id": kw.pop("who", "bobby"), "name": "Bobby", "rating": kw.pop("rating", 1635)},
        "destUser": {"id": "mistralbot", "name": "MistralBot", "rating": 1500, "title": "BOT"},
        "variant": {"key": kw.pop("variant", "standard"), "name": "Standard", "short": "Std"},
        "rated": kw.pop("rated", True),
        "speed": kw.pop("speed", "blitz"),
        "timeControl": kw.pop("tc", {"type": "clock", "limit": limit, "increment": inc, "show": "3+2"}),
        "color": "random",
        "finalColor": "black",
        "perf": {"icon": "", "name": "Blitz"},
    }
    if kw.pop("bot", False):
        ch["challenger"]["title"] = "BOT"
    ch.update(kw)
    return ch


@pytest.mark.parametrize(
    ("cfg", "ch", "reason"),
    [
        ({}, challenge(variant="chess960"), "standard"),  # we play standard chess only
        ({"variants": ["standard", "fromPosition"]}, challenge(variant="atomic"), "variant"),
        # A Chess960 start sent as "from position" (castling rights on the b- and g-file rooks).
        (
            {"variants": ["standard", "fromPosition"]},
            challenge(
                variant="fromPosition",
                initialFen="bqnb1rkr/pp3ppp/3ppn2/2p5/5P2/P2P4/NPP1P1PP/BQ1BNRKR w HFhf - 2 9",
            ),
            "variant",
        ),
        ({}, challenge(tc={"type": "correspondence", "daysPerTurn": 3}, speed="correspondence"), "tooSlow"),
        ({}, challenge(tc={"type": "unlimited"}, speed="correspondence"), "tooSlow"),
        ({"time_controls": ["blitz", "rapid"]}, challenge(limit=60, inc=0, speed="bullet"), "tooFast"),
        ({"time_controls": ["bullet", "blitz"]}, challenge(limit=900, inc=10, speed="rapid"), "tooSlow"),
        ({"time_controls": ["bullet", "rapid"]}, challenge(speed="blitz"), "timeControl"),
        ({"min_base": 300}, challenge(limit=180, inc=2), "tooFast"),
        ({"max_increment": 1}, challenge(limit=180, inc=2), "tooSlow"),
        ({"min_base": 300, "max_increment": 1}, challenge(limit=180, inc=2), "timeControl"),
        ({"modes": ["casual"]}, challenge(rated=True), "casual"),
        ({"modes": ["rated"]}, challenge(rated=False), "rated"),
        ({"accept_bot": False}, challenge(bot=True), "noBot"),
        ({"only_bot": True}, challenge(), "onlyBot"),
        ({"block_list": ["Bobby"]}, challenge(), "generic"),
        ({"allow_list": ["carol"]}, challenge(), "generic"),
        ({"min_rating": 1800}, challenge(rating=1635), "generic"),
    ],
)
def test_declines_carry_the_fitting_reason(cfg: dict[str, Any], ch: dict[str, Any], reason: str) -> None:
    verdict = check_challenge(ch, ChallengeConfig(**cfg))
    assert not verdict.accept and verdict.reason == reason, verdict
    assert verdict.reason in DECLINE_REASONS


def test_accepts_what_fits_and_says_later_when_busy() -> None:
    cfg = ChallengeConfig(concurrency=2, rating_difference=200)
    assert check_challenge(challenge(), cfg, my_ratings={"blitz": 1500}).accept
    assert check_challenge(challenge(rating=1800), cfg, my_ratings={"blitz": 1500}).reason == "generic"
    assert check_challenge(challenge(), cfg, busy_slots=2).reason == "later"
    assert (
        check_challenge(
            challenge(), ChallengeConfig(concurrency=3), busy_slots=1, games_with_challenger=1
        ).reason
        == "later"
    )


def test_variant_and_time_control_challenges_declined_over_http(harness, lichess) -> None:
    world = lichess.world
    h = harness()
    h.wait_connected()
    c960 = world.send_challenge("alice", BOT_ID, variant="chess960")
    slow = world.send_challenge("alice", BOT_ID, limit_s=3600, inc_s=30)  # classical, beyond max_base 1800
    corr = world.send_challenge("alice", BOT_ID, limit_s=None, inc_s=None, days=3)
    h.wait(lambda: len(world.declines) == 3, 10, "three declines")
    assert world.declines == {c960: "standard", slow: "tooSlow", corr: "tooSlow"}
    assert not world.games
    decline_bodies = [r.body for r in world.requests if r.path.endswith("/decline")]
    assert sorted(b["reason"] for b in decline_bodies) == ["standard", "tooSlow", "tooSlow"]  # form-encoded
    assert_clean_traffic(world)


def test_concurrency_limit_holds_and_games_share_the_model(harness, lichess) -> None:
    world = lichess.world
    world.add_user("carol", name="Carol", rating=1500, opponent=Opponent(resign_at_ply=10, delay=0.1))
    world.add_user("dave", name="Dave", rating=1500, opponent=Opponent(resign_at_ply=10, delay=0.1))
    world.users["alice"].opponent = Opponent(resign_at_ply=10, delay=0.1)
    h = harness(**{"challenge.concurrency": 2})
    h.wait_connected()
    a = world.send_challenge("alice", BOT_ID, color="black")
    c = world.send_challenge("carol", BOT_ID, color="black")
    h.wait(lambda: a in world.games and c in world.games, 10, "two games")
    d = world.send_challenge("dave", BOT_ID, color="black")
    h.wait(lambda: d in world.declines, 10, "the third challenge answered")
    assert world.declines[d] == "later"
    ga, gc = h.wait_game_over(a), h.wait_game_over(c)
    assert ga.status == gc.status == "resign"
    # Both games were played at the same time: their spans of move requests overlap.
    spans = []
    for gid in (a, c):
        times = [r.at for r in world.requests if r.path.startswith(f"/api/bot/game/{gid}/move/")]
        spans.append((min(times), max(times)))
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans
    assert h.bot.results["won"] == 2
    # Once a slot is free again, a challenge is accepted.
    e = world.send_challenge("dave", BOT_ID, color="black")
    h.wait(lambda: e in world.games, 10, "a game once slots are free")
    assert_clean_traffic(world)


def test_concurrency_one_declines_a_second_challenge_during_a_game(harness, lichess) -> None:
    world = lichess.world
    world.users["alice"].opponent = Opponent(resign_at_ply=8, delay=0.2)
    h = harness()
    h.wait_connected()
    a = world.send_challenge("alice", BOT_ID, color="black")
    h.wait(lambda: a in world.games, 10, "the game")
    time.sleep(0.2)
    b = world.send_challenge("robo", BOT_ID, color="black")
    h.wait(lambda: b in world.declines, 10, "the second challenge answered")
    assert world.declines[b] == "later"
    h.wait_game_over(a)
    assert len(world.games) == 1


def test_three_games_over_one_pipelined_scorer(lichess, tmp_path, tiny_model_dir) -> None:
    """The bot's games over a scorer sized as the bot's loader sizes it (2N+2 slots,
    batches of N: pipelined): three games at once all end normally, every move legal."""
    from engine.config import ModelConfig
    from engine.model import load_model
    from engine.scoring import LMScorer
    from tests.bot.conftest import Harness, bot_config

    loaded = load_model(ModelConfig(path=str(tiny_model_dir), device="cpu"))
    scorer = LMScorer(loaded.model, loaded.tokenizer, loaded.device, cache_slots=8, max_batch=3)
    assert scorer.pipelined
    world = lichess.world
    for name in ("carol", "dave"):
        world.add_user(name, name=name.title(), rating=1500, opponent=Opponent(resign_at_ply=12, delay=0.05))
    world.users["alice"].opponent = Opponent(resign_at_ply=12, delay=0.05)
    h = Harness(lichess, bot_config(lichess, tmp_path, **{"challenge.concurrency": 3}), scorer).start()
    try:
        h.wait_connected()
        gids = [world.send_challenge(u, BOT_ID, color="black") for u in ("alice", "carol", "dave")]
        h.wait(lambda: all(g in world.games for g in gids), 10, "three games")
        assert all(h.wait_game_over(g, timeout=90).status == "resign" for g in gids)
        assert h.bot.results["won"] == 3
        assert scorer._batcher.items >= 3 * 6  # every move of the bot went through the shared scorer
        assert_clean_traffic(world)
    finally:
        h.close()
