"""Ladder anchors: calibrated opponents below Stockfish's weakest level, read from a YAML
file, played like a level at their own Elo, with bad files refused clearly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from arena.engines import parse_engine
from arena.errors import ArenaError
from arena.ladder import ANCHORS_FILE, LadderOptions, load_anchors, run_ladder
from arena.match import PlaySettings

ENGINES = Path(__file__).parent / "engines"
RANDOM = f"{sys.executable} {ENGINES / 'random_engine.py'}"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_an_anchor_is_played_and_fitted_at_its_elo(tmp_path: Path) -> None:
    anchors = write(
        tmp_path / "anchors.yaml",
        f"anchors:\n  rnd-500:\n    engine: [\"{RANDOM}\"]\n    elo: 500\n    error: 60\n    calibration: a test\n",
    )
    engine = parse_engine([RANDOM, "name=rnd"])
    # Four plies, then a draw by adjudication: every game a half point.
    settings = PlaySettings(tc="inf", movetime_ms=10, max_plies=4)
    opts = LadderOptions(levels=[], anchors=["rnd-500"], anchors_file=str(anchors), games=2,
                         json=str(tmp_path / "l.json"), show_progress=False)  # fmt: skip
    report = run_ladder(engine, settings, opts)
    [level] = report["levels"]
    assert level["name"] == "rnd-500" and level["anchor"] is True and level["elo"] == 500 and level["elo_error"] == 60
    assert (level["games"], level["draws"]) == (2, 2)
    assert report["fit"]["elo"] == pytest.approx(500, abs=1)  # half the points against a 500: 500
    assert any("anchor rnd-500: Elo 500 +/- 60 (95%, a test)" in n for n in report["notes"])


def test_unknown_and_repeated_anchors_are_refused(tmp_path: Path) -> None:
    anchors = write(tmp_path / "a.yaml", f"anchors:\n  a:\n    engine: [\"{RANDOM}\"]\n    elo: 800\n    error: 50\n")
    engine = parse_engine([RANDOM, "name=rnd"])
    settings = PlaySettings(tc="inf", movetime_ms=10, max_plies=4)
    with pytest.raises(ArenaError, match=r"unknown anchor 'b' \(anchors in .*a.yaml: a\)"):
        run_ladder(engine, settings, LadderOptions(levels=[], anchors=["b"], anchors_file=str(anchors)))
    with pytest.raises(ArenaError, match="anchor 'a' given twice"):
        run_ladder(engine, settings, LadderOptions(levels=[], anchors=["a", "a"], anchors_file=str(anchors)))
    with pytest.raises(ArenaError, match="at least one Stockfish level or anchor"):
        run_ladder(engine, settings, LadderOptions(levels=[], anchors=[]))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("anchors: [1, 2]\n", "expected a mapping 'anchors:"),
        ("anchors:\n  a:\n    engine: x\n    elo: high\n    error: 5\n", "anchor 'a': elo must be a number, not 'high'"),
        ("anchors:\n  a:\n    engine: x\n    elo: 900\n    error: -5\n", "anchor 'a': error must be >= 0"),
        ("anchors:\n  a:\n    engine: x\n    elo: 900\n    error: 5\n    games: 3\n", "anchor 'a': unknown key 'games'"),
        ("anchors:\n  a:\n    elo: 900\n    error: 5\n", "anchor 'a': engine must be an engine spec"),
        ("anchors: {a: [\n", "not valid YAML"),
    ],
)
def test_bad_anchor_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ArenaError, match=message):
        load_anchors(write(tmp_path / "bad.yaml", text))
    with pytest.raises(ArenaError, match="cannot read it"):
        load_anchors(tmp_path / "missing.yaml")


def test_the_shipped_anchors_are_calibrated_stockfish_settings(stockfish_path: str) -> None:
    table = load_anchors(ANCHORS_FILE)
    assert table
    for anchor in table.values():
        spec = parse_engine(anchor.engine, stockfish_path=stockfish_path)
        assert spec.command and anchor.error > 0 and anchor.calibration
        assert anchor.elo < 1350  # below the weakest Stockfish level, the reason it exists
