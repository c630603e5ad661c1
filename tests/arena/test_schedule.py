"""Ladder and tournament schedules: a game's place does not depend on the games per pairing,
so a run resumed with a raised ``--games`` plays on where it stopped."""

from __future__ import annotations

import itertools
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from arena.engines import parse_engine
from arena.errors import ArenaError, GameLogError
from arena.ladder import LadderOptions, ladder_schedule, run_ladder
from arena.match import PlaySettings, interleaved_schedule, paired_schedule
from arena.tournament import TournamentOptions, round_robin, run_tournament

ENGINES = Path(__file__).parent / "engines"
RANDOM = f"{sys.executable} {ENGINES / 'random_engine.py'}"


@pytest.mark.parametrize("games", [1, 2, 3, 4, 7])
def test_more_games_extend_the_schedule_without_moving_a_game(games: int) -> None:
    order = [5, 3, 9, 1]
    pairings = [(0, 1), (0, 2), (1, 2)]
    small = interleaved_schedule(pairings, games, order)
    large = interleaved_schedule(pairings, games + 3, order)
    by_index = {t.index: t for t in large}
    assert all(by_index[t.index] == t for t in small)
    assert len({t.index for t in large}) == len(large) == 3 * (games + 3)
    per_pairing = Counter(tuple(sorted((t.white, t.black))) for t in small)
    assert per_pairing == {p: games for p in pairings}


def test_each_pairing_meets_the_openings_in_order_with_colours_swapped() -> None:
    order = [5, 3, 9]
    tasks = interleaved_schedule([(0, 1), (0, 2)], 6, order)
    for a, b in [(0, 1), (0, 2)]:
        games = sorted((t for t in tasks if {t.white, t.black} == {a, b}), key=lambda t: t.index)
        assert [t.opening for t in games] == [5, 5, 3, 3, 9, 9]
        assert [t.white for t in games] == [a, b] * 3
        assert len({t.pair for t in games}) == 3
        assert all(games[i].pair == games[i + 1].pair for i in range(0, 6, 2))
    # Interleaved: the first pair at every level comes before any second pair.
    assert [(t.white, t.black) for t in sorted(tasks, key=lambda t: t.index)[:4]] == [
        (0, 1),
        (1, 0),
        (0, 2),
        (2, 0),
    ]


def test_one_pairing_is_the_match_schedule() -> None:
    order = [2, 0, 1]
    assert interleaved_schedule([(0, 1)], 5, order) == paired_schedule(0, 1, 5, order)
    assert ladder_schedule(1, 5, order) == paired_schedule(0, 1, 5, order)
    assert round_robin(2, 5, order) == paired_schedule(0, 1, 5, order)


def test_a_tournament_plays_one_pairing_after_another_with_the_same_numbers() -> None:
    order = [5, 3, 9]
    tasks = round_robin(4, 5, order)
    pairings = [tuple(sorted((t.white, t.black))) for t in tasks]
    firsts = [pairings.index(p) for p in dict.fromkeys(pairings)]
    assert all(
        pairings[i] == pairings[firsts[k]]
        for k in range(len(firsts))
        for i in range(firsts[k], firsts[k] + 5)
    )
    assert len(dict.fromkeys(pairings)) == 6 and len(tasks) == 30  # each engine starts once a pairing
    # Same games at the same numbers as the interleaved schedule, only played in another order.
    by_index = {t.index: t for t in interleaved_schedule(list(itertools.combinations(range(4), 2)), 5, order)}
    assert all(by_index[t.index] == t for t in tasks) and len(by_index) == len(tasks)


def _games(log: Path) -> dict[int, dict]:
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    return {g["game"]["index"]: g["game"] for g in lines if g["type"] == "game"}


@pytest.mark.timeout(120)
def test_tournament_resumed_with_more_games_keeps_the_first_and_plays_the_rest(tmp_path: Path) -> None:
    specs = [parse_engine([RANDOM, f"name=r{i}"]) for i in range(3)]
    settings = PlaySettings(tc="inf", movetime_ms=10, max_plies=6)
    json_path = tmp_path / "t.json"
    first = run_tournament(
        specs, settings, TournamentOptions(games=1, json=str(json_path), show_progress=False)
    )
    assert first["games"] == 3
    log = tmp_path / "t.games.jsonl"
    kept = _games(log)
    assert sorted(kept) == [0, 2, 4]  # the first game of each pairing's first pair

    again = TournamentOptions(games=4, json=str(json_path), resume=True, show_progress=False)
    report = run_tournament(specs, settings, again)
    assert report["games"] == 12
    final = _games(log)
    assert sorted(final) == list(range(12))
    assert all(final[i] == g for i, g in kept.items())  # finished games untouched
    assert all(r["games"] == 8 for r in report["ratings"])


@pytest.mark.timeout(120)
def test_ladder_resumed_with_more_games_plays_on(stockfish_path: str, tmp_path: Path) -> None:
    engine = parse_engine([RANDOM, "name=random"])
    settings = PlaySettings(tc="inf", nodes=2_000, max_plies=8)

    def opts(games: int, resume: bool) -> LadderOptions:
        return LadderOptions(
            levels=[1320, 1700],
            games=games,
            json=str(tmp_path / "l.json"),
            resume=resume,
            show_progress=False,
            stockfish=stockfish_path,
        )

    assert run_ladder(engine, settings, opts(2, False))["games"] == 4
    kept = _games(tmp_path / "l.games.jsonl")
    report = run_ladder(engine, settings, opts(3, True))
    assert [lv["games"] for lv in report["levels"]] == [3, 3]
    final = _games(tmp_path / "l.games.jsonl")
    assert sorted(final) == [0, 1, 2, 3, 4, 6]
    assert all(final[i] == g for i, g in kept.items())


def _edit_and_resume(tmp_path: Path, edit: Callable[[list[dict]], None], games: int) -> None:
    """Play a one-game-a-pairing tournament of three random movers, let ``edit`` change its
    log's lines (header first), then resume it with ``games`` a pairing."""
    specs = [parse_engine([RANDOM, f"name=r{i}"]) for i in range(3)]
    settings = PlaySettings(tc="inf", movetime_ms=10, max_plies=4)
    json_path = tmp_path / "t.json"
    run_tournament(specs, settings, TournamentOptions(games=1, json=str(json_path), show_progress=False))
    log = tmp_path / "t.games.jsonl"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    edit(lines)
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    again = TournamentOptions(games=games, json=str(json_path), resume=True, show_progress=False)
    run_tournament(specs, settings, again)


def test_a_log_whose_games_sit_elsewhere_is_refused(tmp_path: Path) -> None:
    def swap_colours(lines: list[dict]) -> None:  # as another schedule would have them
        for item in lines:
            if item["type"] == "game":
                g = item["game"]
                g["white_engine"], g["black_engine"] = g["black_engine"], g["white_engine"]

    with pytest.raises(ArenaError, match="is not the game this run schedules there"):
        _edit_and_resume(tmp_path, swap_colours, games=2)


def test_a_log_of_the_earlier_schedule_is_refused(tmp_path: Path) -> None:
    def earlier_identity(lines: list[dict]) -> None:
        ident = lines[0]["identity"]
        del ident["schedule"]
        ident["games_per_pairing"] = 1  # what the logs of the pairing-by-pairing schedule held

    with pytest.raises(GameLogError, match="belongs to another match.*games_per_pairing"):
        _edit_and_resume(tmp_path, earlier_identity, games=1)
