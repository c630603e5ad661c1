"""``mistral-chess demo``: one short game, each move printed, the PGN at the end."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import engine.model
import engine.tiny
from arena import demo


@pytest.fixture
def fake_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A fresh cache folder, no bundled model; 'making' the tiny model copies the test one (fast)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(engine.model, "bundled_model_dir", lambda: None)
    made: list[Path] = []

    def fake_make(folder: str | Path, **kwargs: object) -> Path:
        made.append(Path(folder))
        shutil.copytree(tiny_model_dir, folder)
        return Path(folder)

    monkeypatch.setattr(engine.tiny, "make_tiny_mistral", fake_make)
    return tmp_path / "cache"


@pytest.mark.timeout(90)
def test_demo_plays_one_short_game_and_says_it_is_a_plumbing_demo(
    fake_cache: Path, stockfish_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = demo.run_demo(max_plies=8, stockfish=stockfish_path, pgn=str(tmp_path / "demo.pgn"))
    out = capsys.readouterr().out
    assert rc == 0
    assert "PLUMBING DEMO" in out and "RANDOM-WEIGHT" in out
    assert (fake_cache / "mistral-chess" / "tiny-demo" / "config.json").is_file()  # made once, cached
    moves = [
        line
        for line in out.splitlines()
        if re.match(r"^\s*\d+\.(\.\.)? \S+\s+(mistral-chess|Stockfish)", line)
    ]
    assert 1 <= len(moves) <= 8
    assert moves[0].split()[2] == "mistral-chess"  # the engine has White
    assert '[Event "mistral-chess demo"]' in out and '[Termination "' in out
    assert (tmp_path / "demo.pgn").read_text().startswith('[Event "mistral-chess demo"]')


def test_demo_prefers_the_bundled_model(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    monkeypatch.setattr(engine.model, "bundled_model_dir", lambda: tiny_model_dir)
    assert demo.demo_model(None) == (str(tiny_model_dir), False)
