"""Fixtures for the bot's end-to-end tests: a local Lichess, a fast config, a harness."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.bot import Bot
from bot.client import LichessClient
from bot.config import BotConfig, load_bot_config
from tests.bot.fake_lichess import FakeLichess, Game, Opponent, World

BOT_TOKEN = "lip_TestBotToken0123456789"
BOT_ID = "mistralbot"

# Every wait shrunk so a fault costs a fraction of a second.
FAST_NETWORK = {
    "connect_timeout": 1.0,
    "request_timeout": 2.0,
    "move_timeout": 1.0,
    "stream_stall_timeout": 1.0,
    "rate_limit_wait": 0.4,
    "move_rate_limit_wait": 0.2,
    "backoff_initial": 0.05,
    "backoff_max": 0.4,
    "backoff_jitter": 0.5,
    "max_retries": 6,
    "move_retries": 3,
    "game_resync_wait": 0.5,
}


@pytest.fixture(scope="session")
def tiny_scorer(tiny_model_dir: Path) -> Any:
    import torch

    from engine.config import ModelConfig
    from engine.model import load_model
    from engine.scoring import LMScorer

    torch.set_num_threads(1)
    loaded = load_model(ModelConfig(path=str(tiny_model_dir), device="cpu"))
    return LMScorer(loaded.model, loaded.tokenizer, loaded.device)


@pytest.fixture
def lichess() -> Iterator[FakeLichess]:
    world = World(keepalive_s=0.2)
    world.add_user(BOT_ID, name="MistralBot", title="BOT", rating=1500, token=BOT_TOKEN)
    world.add_user("alice", name="Alice", rating=1500, opponent=Opponent())
    world.add_user("robo", name="Robo", title="BOT", rating=1600, opponent=Opponent())
    server = FakeLichess(world).start()
    yield server
    server.stop()


def bot_config(server: FakeLichess, tmp_path: Path, **overrides: Any) -> BotConfig:
    data: dict[str, Any] = {
        "url": server.url,
        "pgn_directory": str(tmp_path / "pgn"),
        "move_overhead": 200,
        "abort_time": 30.0,
        "engine": {"search": {"score_batch": 64}, "draw": {"accept": "never"}},
        "network": dict(FAST_NETWORK),
        "greeting": {"hello": "Hi {opponent}, I am {me}", "goodbye": "Good game!"},
        "test_move": False,
    }
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return load_bot_config(None, data)


class Harness:
    """Runs a bot in a thread against the local server."""

    def __init__(self, server: FakeLichess, cfg: BotConfig, scorer: Any, *, token: str = BOT_TOKEN) -> None:
        self.server = server
        self.world = server.world
        self.stop = threading.Event()
        self.client = LichessClient(token, cfg.url, cfg.network, stop=self.stop)
        self.bot = Bot(cfg, self.client, scorer=scorer, stop=self.stop)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.bot.prepare()
            self.bot.run()
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def start(self) -> Harness:
        self.thread.start()
        return self

    def wait(self, pred: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.error is not None:
                raise AssertionError(f"the bot failed: {self.error!r}")
            with self.world.lock:
                if pred():
                    return
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def wait_connected(self) -> None:
        self.wait(lambda: self.world.stream_connects.get(f"event:{BOT_ID}", 0) >= 1, 15, "the event stream")

    def wait_game_over(self, gid: str, timeout: float = 40.0) -> Game:
        self.wait(
            lambda: gid in self.world.games and self.world.games[gid].status not in ("created", "started"),
            timeout,
            f"game {gid} to end",
        )
        # ...and the bot to record it.
        self.wait(lambda: gid in self.bot.finished_games, 10, f"the bot to record game {gid}")
        return self.world.games[gid]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "the bot did not stop"


@pytest.fixture
def harness(lichess: FakeLichess, tiny_scorer: Any, tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**overrides: Any) -> Harness:
        h = Harness(lichess, bot_config(lichess, tmp_path, **overrides), tiny_scorer)
        made.append(h)
        return h.start()

    yield make
    for h in made:
        h.close()


def assert_clean_traffic(world: World, *, allow_rejected_moves: int = 0) -> None:
    """What the bot sent: always its token; moves only in its own games, each at most once."""
    with world.lock:
        reqs = list(world.requests)
        games = dict(world.games)
    assert reqs, "the bot sent nothing"
    without = [f"{r.method} {r.path}" for r in reqs if r.token != BOT_TOKEN]
    assert not without, f"requests without the bot's token: {without}"
    moves = [r for r in reqs if "/move/" in r.path]
    for r in moves:
        gid = r.path.split("/")[4]
        assert gid in games and games[gid].color_of(BOT_ID), (
            f"move sent in a game that is not the bot's: {r.path}"
        )
    # Every move the server played came from one request; a move sent again after the
    # server had taken it would be answered 400 (not your turn), so rejections count
    # duplicates too.
    for gid, g in games.items():
        mine = [m for m in g.accepted_moves if m[2] == BOT_ID]
        applied = [r for r in moves if r.path.split("/")[4] == gid and r.applied]
        assert len(applied) == len(mine), (
            f"game {gid}: {len(applied)} move requests played, {len(mine)} moves"
        )
    rejected = [r for r in moves if r.status == 400]
    assert len(rejected) <= allow_rejected_moves, f"moves rejected: {[r.path for r in rejected]}"
