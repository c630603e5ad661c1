"""The bot config: YAML into typed dataclasses, errors that name the key, the token kept out."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bot.client import Redactor
from bot.config import BotConfig, load_bot_config, resolve_token
from bot.errors import TokenError
from engine.configtools import to_dict
from engine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_loads_and_equals_the_defaults_where_it_documents_them() -> None:
    cfg = load_bot_config(ROOT / "configs" / "bot.yaml")
    assert cfg.url == "https://lichess.org"
    assert cfg.challenge.variants == ["standard"] and cfg.network.stream_stall_timeout == 20.0
    defaults = BotConfig()
    assert to_dict(cfg.network) == to_dict(defaults.network)
    assert to_dict(cfg.challenge) == to_dict(defaults.challenge)
    assert to_dict(cfg.matchmaking) == to_dict(defaults.matchmaking)


def test_overrides_beat_the_file(tmp_path: Path) -> None:
    cfg = load_bot_config(
        ROOT / "configs" / "bot.yaml", ["challenge.concurrency=3", "url=http://127.0.0.1:9"]
    )
    assert cfg.challenge.concurrency == 3 and cfg.url == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"token": "lip_abc"}, ["token", "LICHESS_BOT_TOKEN"]),
        ({"challenge": {"concurency": 2}}, ["challenge.concurency", "concurrency"]),
        ({"challenge": {"variants": ["chess960"]}}, ["challenge.variants", "chess960"]),
        ({"challenge": {"time_controls": ["ultraBullet"]}}, ["ultraBullet"]),
        ({"challenge": {"concurrency": "two"}}, ["challenge.concurrency", "integer"]),
        ({"matchmaking": {"challenge_mode": "sometimes"}}, ["matchmaking.challenge_mode"]),
        ({"engine": {"search": {"mode": "beam"}}}, ["engine.search.mode"]),
        ({"url": "lichess.org"}, ["url"]),
        ({"engine_file": "no/such/engine.yaml"}, ["engine_file", "not found"]),
    ],
)
def test_bad_config_names_the_key(data: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_bot_config(None, data)
    for w in words:
        assert w in str(err.value)
    assert "lip_abc" not in str(err.value)


def test_engine_file_is_merged_under_the_engine_section(tmp_path: Path) -> None:
    (tmp_path / "engine.yaml").write_text(
        "search:\n  mode: generate\n  temperature: 0.5\nresign:\n  mode: streak\n"
    )
    (tmp_path / "bot.yaml").write_text("engine_file: engine.yaml\nengine:\n  search:\n    temperature: 0.0\n")
    cfg = load_bot_config(tmp_path / "bot.yaml")
    assert cfg.engine.search.mode == "generate"  # from the engine file
    assert cfg.engine.search.temperature == 0.0  # the bot config wins
    assert cfg.engine.resign.mode == "streak"


def test_token_from_the_environment_or_a_file(tmp_path: Path) -> None:
    cfg = BotConfig()
    assert resolve_token(cfg, {"LICHESS_BOT_TOKEN": " lip_env \n"}) == "lip_env"
    f = tmp_path / "token"
    f.write_text("lip_file\n")
    assert resolve_token(dataclasses.replace(cfg, token_file=str(f)), {}) == "lip_file"
    with pytest.raises(TokenError, match="LICHESS_BOT_TOKEN"):
        resolve_token(cfg, {})
    with pytest.raises(TokenError, match="does not exist"):
        resolve_token(dataclasses.replace(cfg, token_file=str(tmp_path / "missing")), {})
    f.write_text("")
    with pytest.raises(TokenError, match="empty"):
        resolve_token(dataclasses.replace(cfg, token_file=str(f)), {})


def test_redactor_hides_the_token_and_bearer_headers() -> None:
    r = Redactor("lip_secret123")
    assert r("401 for lip_secret123 at /api") == "401 for *** at /api"
    assert r("Authorization: Bearer lip_other") == "Authorization: Bearer ***"
