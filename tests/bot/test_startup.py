"""Start-up checks, the CLI end to end, and `bot upgrade`."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bot.bot import Bot
from bot.client import LichessClient
from bot.errors import AccountError, StartupError, TokenError
from engine import cli as engine_cli
from tests.bot.conftest import BOT_ID, BOT_TOKEN, FAST_NETWORK, bot_config
from tests.bot.fake_lichess import Opponent

ROOT = Path(__file__).resolve().parents[2]


def _bot(lichess, tmp_path, token: str, scorer: Any = None, **kw: Any) -> Bot:
    cfg = bot_config(lichess, tmp_path, **kw)
    return Bot(cfg, LichessClient(token, cfg.url, cfg.network), scorer=scorer)


def _streams_opened(world) -> int:
    return sum(1 for r in world.requests if "/stream/" in r.path)


def test_unknown_token_fails_fast_without_leaking_it(lichess, tmp_path) -> None:
    bad = "lip_NotAKnownToken999"
    with pytest.raises(TokenError) as err:
        _bot(lichess, tmp_path, bad).prepare()
    assert "does not know this token" in str(err.value) and bad not in str(err.value)
    assert _streams_opened(lichess.world) == 0


def test_token_without_bot_play_scope(lichess, tmp_path) -> None:
    lichess.world.users[BOT_ID].scopes = "challenge:read,board:play"
    with pytest.raises(TokenError, match="lacks the bot:play scope"):
        _bot(lichess, tmp_path, BOT_TOKEN).prepare()
    assert _streams_opened(lichess.world) == 0


def test_not_a_bot_account(lichess, tmp_path) -> None:
    lichess.world.users[BOT_ID].title = None
    with pytest.raises(AccountError, match="bot upgrade"):
        _bot(lichess, tmp_path, BOT_TOKEN).prepare()


class _BrokenScorer:
    """A model that fails on every call."""

    tokenizer = None

    def count_tokens(self, prompt: Any) -> int:
        return 10

    def score(self, *a: Any, **k: Any) -> Any:
        raise RuntimeError("CUDA error: out of memory")


def test_test_move_plays_with_the_model_and_a_broken_model_stops_the_start(
    lichess, tmp_path, tiny_scorer
) -> None:
    good = _bot(lichess, tmp_path, BOT_TOKEN, scorer=tiny_scorer, test_move=True)
    good.prepare()  # no error: the test move was played by the model
    bad = _bot(lichess, tmp_path, BOT_TOKEN, scorer=_BrokenScorer(), test_move=True)
    with pytest.raises(StartupError, match="test move failed"):
        bad.prepare()
    failing_loader = _bot(lichess, tmp_path, BOT_TOKEN, test_move=True)
    with pytest.raises(StartupError, match="model did not load"):
        failing_loader.prepare(lambda cfg: (_ for _ in ()).throw(OSError("no such folder /models/x")))
    assert _streams_opened(lichess.world) == 0


def _cli_args(lichess, tmp_path: Path, tiny_model_dir: Path) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "engine.cli",
        "bot",
        "--config",
        str(ROOT / "configs" / "bot.yaml"),
        "--base-url",
        lichess.url,
        "--max-games",
        "1",
        f"engine.model.path={tiny_model_dir}",
        f"pgn_directory={tmp_path / 'pgn'}",
        "log_level=DEBUG",
        "move_overhead=200",
    ]
    args += [f"network.{k}={v}" for k, v in FAST_NETWORK.items()]
    return args


def test_cli_plays_a_game_and_never_logs_the_token(lichess, tmp_path: Path, tiny_model_dir: Path) -> None:
    world = lichess.world
    world.users["alice"].opponent = Opponent(resign_at_ply=4)
    env = {**os.environ, "LICHESS_BOT_TOKEN": BOT_TOKEN}
    # A 500 and a dropped answer on the way, to make the retry paths log too.
    world.add_fault(r"^/api/account/playing$", status=500, times=1)
    world.add_fault(r"/move/", drop=True, times=1)
    proc = subprocess.Popen(
        _cli_args(lichess, tmp_path, tiny_model_dir),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while world.stream_connects.get(f"event:{BOT_ID}", 0) == 0:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the bot never connected"
            time.sleep(0.1)
        cid = world.send_challenge("alice", BOT_ID, color="black")
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert world.games[cid].status == "resign"
    assert "test move: 1." in err and "game " + cid + " over: resign 1-0" in err
    assert BOT_TOKEN not in err and BOT_TOKEN not in out
    assert len(list((tmp_path / "pgn").glob("*.pgn"))) == 1


def test_cli_bad_token_is_one_clear_line(lichess, tmp_path: Path, tiny_model_dir: Path) -> None:
    bad = "lip_WrongToken42"
    env = {**os.environ, "LICHESS_BOT_TOKEN": bad}
    proc = subprocess.run(
        _cli_args(lichess, tmp_path, tiny_model_dir), env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "mistral-chess bot:" in proc.stderr and "does not know this token" in proc.stderr
    assert bad not in proc.stderr and "Traceback" not in proc.stderr


def test_upgrade_needs_confirmation(lichess, monkeypatch, capsys) -> None:
    world = lichess.world
    world.add_user("newbie", name="Newbie", token="lip_NewbieToken")
    monkeypatch.setenv("LICHESS_BOT_TOKEN", "lip_NewbieToken")
    args = ["bot", "upgrade", "--base-url", lichess.url]
    monkeypatch.setattr(sys, "stdin", io.StringIO("someone-else\n"))
    assert engine_cli.main(args) == 2
    assert "not confirmed" in capsys.readouterr().err and world.users["newbie"].title is None
    monkeypatch.setattr(sys, "stdin", io.StringIO("newbie\n"))
    assert engine_cli.main(args) == 0
    assert world.users["newbie"].title == "BOT" and world.upgraded == ["newbie"]
    assert engine_cli.main(args + ["--yes"]) == 0
    assert "already a bot account" in capsys.readouterr().out


def test_upgrade_refused_by_the_server_is_reported(lichess, monkeypatch, capsys) -> None:
    world = lichess.world
    world.add_user("veteran", name="Veteran", token="lip_VeteranToken", games_played=12)
    monkeypatch.setenv("LICHESS_BOT_TOKEN", "lip_VeteranToken")
    assert engine_cli.main(["bot", "upgrade", "--base-url", lichess.url, "--yes"]) == 2
    err = capsys.readouterr().err
    assert "upgrade: HTTP 400" in err and "played games" in err and "lip_VeteranToken" not in err


class _WarmupRecorder:
    """A scorer stand-in that records the warm-up the bot asks for."""

    tokenizer = None

    def __init__(self) -> None:
        self.warmups: list[int] = []

    def warmup(self, *, max_tokens: int = 256, max_games: int = 1) -> int:
        self.warmups.append(max_games)
        return 7


def test_concurrent_games_warm_the_shared_scorer_up_for_that_many_games(lichess, tmp_path) -> None:
    import sys

    before = sys.getswitchinterval()
    try:
        many = _WarmupRecorder()
        _bot(lichess, tmp_path, BOT_TOKEN, scorer=many, **{"challenge.concurrency": 3}).prepare()
        assert many.warmups == [3]
        assert sys.getswitchinterval() == pytest.approx(0.0005)
        sys.setswitchinterval(before)
        one = _WarmupRecorder()
        _bot(lichess, tmp_path, BOT_TOKEN, scorer=one).prepare()  # one game at a time: nothing batched
        assert one.warmups == []
        assert sys.getswitchinterval() == pytest.approx(before)
    finally:
        sys.setswitchinterval(before)
