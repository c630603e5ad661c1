"""Data set building: exact examples for known games, corrupt records counted, split by
game, tokens equal to direct tokenization."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from engine.errors import ConfigError
from tests.training.conftest import CORRUPT_ROWS, FOOL_UCI, SCHOLAR_UCI, write_laion
from training.config import DatasetConfig, ExamplesConfig, load_dataset_config
from training.dataset import build_dataset, merge_datasets
from training.errors import DataError
from training.examples import ExampleMaker
from training.sources import Game, moves_key, replay_uci

HEADER = (
    '[Event "Rated Classical game"]\n[Site "https://lichess.org"]\n'
    '[White "{white}"]\n[Black "{black}"]\n[Result "{result}"]\n{elo}\n\n'
)


def header(*, white_moves: bool, result: str) -> str:
    """The engine's play-time header with default names: the side to move is mistral-chess at 2800."""
    if white_moves:
        return HEADER.format(white="mistral-chess", black="?", result=result, elo='[WhiteElo "2800"]')
    return HEADER.format(white="?", black="mistral-chess", result=result, elo='[BlackElo "2800"]')


# Scholar's mate: the open-ended move text before each ply, and the move played there.
SCHOLAR_POSITIONS = [
    ("1.", " e4"),
    ("1. e4", " e5"),
    ("1. e4 e5 2.", " Bc4"),
    ("1. e4 e5 2. Bc4", " Nc6"),
    ("1. e4 e5 2. Bc4 Nc6 3.", " Qh5"),
    ("1. e4 e5 2. Bc4 Nc6 3. Qh5", " Nf6"),
    ("1. e4 e5 2. Bc4 Nc6 3. Qh5 Nf6 4.", " Qxf7#"),
]


def scholar() -> Game:
    sans, _ = replay_uci(SCHOLAR_UCI)
    return Game("mem", 0, sans, "1-0", moves_key(chess_start(), SCHOLAR_UCI), termination="CHECKMATE")


def chess_start() -> str:
    import chess

    return chess.STARTING_FEN


def maker(**examples: Any) -> ExampleMaker:
    return ExampleMaker(DatasetConfig(examples=ExamplesConfig(**examples)))


def test_next_move_examples_exactly() -> None:
    exs = maker(positions_per_game=0).examples(scholar())
    assert [e.ply for e in exs] == list(range(7))
    for e, (moves, completion) in zip(exs, SCHOLAR_POSITIONS, strict=True):
        assert e.prompt.text == header(white_moves=e.ply % 2 == 0, result="1-0") + moves
        assert e.completion == completion
        assert not e.eos


def test_winner_only_and_continuation_examples_exactly() -> None:
    exs = maker(positions_per_game=0, moves="winner", kinds={"continuation": 1.0}, min_ply=2).examples(scholar())
    assert [e.ply for e in exs] == [2, 4, 6]  # White won: White's moves only
    assert exs[0].prompt.text == header(white_moves=True, result="1-0") + "1. e4 e5 2."
    assert exs[0].completion == " Bc4 Nc6 3. Qh5 Nf6 4. Qxf7# 1-0"
    assert exs[2].completion == " Qxf7# 1-0" and exs[2].eos
    short = maker(positions_per_game=0, kinds={"continuation": 1.0}, continuation_plies=2).examples(scholar())
    assert short[1].prompt.text.endswith("1. e4") and short[1].completion == " e5 2. Bc4" and not short[1].eos


def test_source_players_mode_uses_given_names() -> None:
    cfg = DatasetConfig(examples=ExamplesConfig(positions_per_game=0))
    cfg.players.mode = "source"
    game = scholar()
    game.white, game.white_elo = "alice", 2100
    ex = ExampleMaker(cfg).examples(game)[3]
    assert ex.prompt.text.startswith(HEADER.format(white="alice", black="?", result="1-0", elo='[WhiteElo "2100"]'))


def test_bad_example_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown kind 'puzzle'"):
        load_dataset_config(None, ["sources=[{path: x}]", "examples.kinds={puzzle: 1}"])
    with pytest.raises(ConfigError, match="unknown config key examples.positions"):
        load_dataset_config(None, ["sources=[{path: x}]", "examples.positions=3"])
    with pytest.raises(ConfigError, match="sources"):
        load_dataset_config(None, [])


def games_of_folder(folder: Path) -> list[tuple[list[str], str, str]]:
    out: list[tuple[list[str], str, str]] = []
    for f in sorted(folder.glob("*.parquet")):
        d = pq.read_table(f).to_pydict()
        out += list(zip(d["Moves"], d["Termination"], d["Result"], strict=True))
    return out


def rows(folder: Path, split: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in sorted(folder.glob(f"{split}-*.parquet")):
        out += pq.read_table(f).to_pylist()
    return out


def test_built_dataset(train_dataset: Path, mixed_games_dir: Path, mistral_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    stats = json.loads((train_dataset / "stats.json").read_text())
    assert stats["games"]["read"] == 24 + 2 + len(CORRUPT_ROWS)
    expected_corrupt: dict[str, int] = {}
    for *_, kind in CORRUPT_ROWS:
        expected_corrupt[kind] = expected_corrupt.get(kind, 0) + 1
    assert stats["games"]["corrupt"] == expected_corrupt
    corrupt = [json.loads(line) for line in (train_dataset / "corrupt.jsonl").read_text().splitlines()]
    known = str(mixed_games_dir / "zz-known-and-corrupt.parquet")
    assert sorted((c["source"], c["index"]) for c in corrupt) == [(known, i) for i in range(2, 2 + len(CORRUPT_ROWS))]

    train, val = rows(train_dataset, "train"), rows(train_dataset, "validation")
    assert stats["examples"]["train"]["total"] == len(train) and len(val) > 0
    # Split by game: no game has examples on both sides.
    assert not {r["game"] for r in train} & {r["game"] for r in val}
    # The known games' examples are exactly the engine's prompts for their positions.
    mate = [r for r in train + val if r["game"] == f"{known}:0"]
    assert mate, "scholar's mate should give examples"
    for r in mate:
        moves, completion = SCHOLAR_POSITIONS[r["ply"]]
        assert r["prompt"] == header(white_moves=r["ply"] % 2 == 0, result="1-0") + moves
        assert r["completion"] == completion and r["kind"] == "next_move"
    fool = [r for r in train + val if r["game"] == f"{known}:1"]
    assert {(r["ply"], r["completion"]) for r in fool} <= {(0, " f3"), (1, " e5"), (2, " g4"), (3, " Qh4#")}
    assert all('[Result "0-1"]' in r["prompt"] for r in fool)

    # Tokens: the fast prefix cut equals tokenizing each example whole, as the engine does.
    tok = AutoTokenizer.from_pretrained(str(mistral_tokenizer_dir))
    for r in train[:200] + val:
        assert r["input_ids"] == tok(r["prompt"] + r["completion"]).input_ids
        assert r["prompt_tokens"] == len(tok(r["prompt"]).input_ids)
    assert stats["tokenizer"]["verify_mismatches"] == 0 and stats["tokenizer"]["fast_cut"] > 0

    # Held-out positions for the generation metrics carry their FEN.
    evals = rows(train_dataset, "eval")
    assert evals and all(r["fen"] for r in evals)
    assert {r["game"] for r in evals} <= {r["game"] for r in val}


def test_fast_tokens_match_direct_on_whole_games(tmp_path: Path, selfplay_dir: Path, mistral_tokenizer_dir: Path) -> None:
    """Every position of every game, continuations to the end included: no mismatch."""
    from transformers import AutoTokenizer

    cfg = load_dataset_config(
        None,
        [
            f"sources=[{{path: {selfplay_dir}}}]",
            f"out={tmp_path / 'ds'}",
            "workers=1",
            "max_games=6",
            "examples.positions_per_game=0",
            "examples.kinds={next_move: 1, continuation: 1}",
            "split.validation_fraction=0",
            "verify_tokens_every=1",
            "max_length=4096",
        ],
    )
    stats = build_dataset(cfg, progress_bar=False)
    assert stats["games"]["used"] == 6
    assert stats["tokenizer"]["verify_mismatches"] == 0
    assert stats["tokenizer"]["verified"] == stats["tokenizer"]["fast_cut"] > 100
    tok = AutoTokenizer.from_pretrained(str(mistral_tokenizer_dir))
    cont = [r for r in rows(tmp_path / "ds", "train") if r["eos"]]
    assert cont
    for r in cont[:20]:
        assert r["input_ids"] == tok(r["prompt"] + r["completion"]).input_ids + [tok.eos_token_id]


def test_dataset_errors(tmp_path: Path) -> None:
    only_bad = write_laion(tmp_path / "bad.parquet", [(m, t, r) for m, t, r, _ in CORRUPT_ROWS])
    cfg = load_dataset_config(None, [f"sources=[{{path: {only_bad}}}]", f"out={tmp_path / 'out'}", "workers=1", "tokenizer="])
    with pytest.raises(DataError, match="no examples.*corrupt: illegal_move 2"):
        build_dataset(cfg, progress_bar=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()

    good = write_laion(tmp_path / "good.parquet", [(SCHOLAR_UCI, "CHECKMATE", "1-0"), (FOOL_UCI, "CHECKMATE", "0-1")])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("user data")
    cfg = load_dataset_config(None, [f"sources=[{{path: {good}}}]", f"out={tmp_path / 'taken'}", "tokenizer="])
    with pytest.raises(DataError, match="not empty"):
        build_dataset(cfg, progress_bar=False)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "user data"


def test_max_games_cap_is_exact(tmp_path: Path, selfplay_dir: Path) -> None:
    common = [f"sources=[{{path: {selfplay_dir}, max_games: 5}}]", "tokenizer=", "batch_games=2", "split.validation_fraction=0"]
    one = build_dataset(load_dataset_config(None, [*common, f"out={tmp_path / 'a'}", "workers=1"]), progress_bar=False)
    two = build_dataset(load_dataset_config(None, [*common, f"out={tmp_path / 'b'}", "workers=2"]), progress_bar=False)
    assert one["games"]["used"] == two["games"]["used"] == 5
    assert rows(tmp_path / "a", "train") == rows(tmp_path / "b", "train")  # the worker count changes nothing


def test_dedupe_keeps_the_first_copy_of_each_game(tmp_path: Path, selfplay_dir: Path) -> None:
    """Two sources where the second repeats 5 games of the first, twice, and a game of its own:
    with dedupe every game is built once, as a build of the distinct games alone builds it."""
    games = games_of_folder(selfplay_dir)
    rows_of = [(m, t, r) for m, t, r in games]
    again = write_laion(tmp_path / "again.parquet", rows_of[:5] + rows_of[:5] + [(SCHOLAR_UCI, "CHECKMATE", "1-0")])
    alone = write_laion(tmp_path / "alone.parquet", rows_of + [(SCHOLAR_UCI, "CHECKMATE", "1-0")])
    common = ["tokenizer=", "batch_games=4", "split.validation_fraction=0"]
    both = [f"sources=[{{path: {selfplay_dir}}}, {{path: {again}}}]", *common]
    kept = build_dataset(load_dataset_config(None, [*both, f"out={tmp_path / 'd'}", "workers=2", "dedupe=true"]),
                         progress_bar=False)  # fmt: skip
    assert kept["games"]["used"] == len(games) + 1 and kept["games"]["filtered"] == {"duplicate": 10}
    ref = build_dataset(load_dataset_config(None, [f"sources=[{{path: {alone}}}]", *common, f"out={tmp_path / 'r'}",
                                                   "workers=1"]), progress_bar=False)  # fmt: skip
    assert ref["games"]["used"] == kept["games"]["used"]

    def examples(name: str) -> list[dict[str, Any]]:  # without the game's file and row
        return [{k: v for k, v in r.items() if k != "game"} for r in rows(tmp_path / name, "train")]

    assert examples("d") == examples("r")
    assert {r["game"].split(":")[0] for r in rows(tmp_path / "d", "train")} >= {str(again)}  # its own game
    plain = build_dataset(load_dataset_config(None, [*both, f"out={tmp_path / 'p'}", "workers=1"]), progress_bar=False)
    assert plain["games"]["used"] == len(games) + 11 and not plain["games"]["filtered"]  # off by default


def test_build_in_parts_with_exclude_then_merge(
    tmp_path: Path, selfplay_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A build in two parts, the second excluding the first's games, merged, equals the build of
    both sources at once with dedupe: the same rows in the same order, the same games.keys."""
    from engine.cli import main

    games = games_of_folder(selfplay_dir)
    first = write_laion(tmp_path / "first.parquet", games[:10])
    second = write_laion(tmp_path / "second.parquet", games[5:] + [(SCHOLAR_UCI, "CHECKMATE", "1-0")])  # 5 shared

    def build(name: str, sources: list[Path], *extra: str) -> dict[str, Any]:
        srcs = ", ".join(f"{{path: {s}}}" for s in sources)
        over = [f"sources=[{srcs}]", "tokenizer=", "batch_games=4", "split.validation_fraction=0.25",
                f"out={tmp_path / name}", "workers=1", *extra]  # fmt: skip
        return build_dataset(load_dataset_config(None, over), progress_bar=False)

    a = build("a", [first])
    assert (tmp_path / "a" / "games.keys").stat().st_size == 16 * a["games"]["used"] == 16 * 10
    b = build("b", [second], f"exclude=[{tmp_path / 'a'}]")
    assert b["games"]["filtered"] == {"excluded": 5} and b["games"]["used"] == len(games) - 10 + 1
    by_files = build("b2", [second], f"exclude=[{first}]")  # game files are hashed as the build hashes them
    assert rows(tmp_path / "b2", "train") == rows(tmp_path / "b", "train") and by_files["games"]["filtered"] == {"excluded": 5}
    whole = build("w", [first, second], "dedupe=true")
    assert whole["games"]["filtered"] == {"duplicate": 5}

    assert main(["dataset", "merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]) == 0
    brief = json.loads(capsys.readouterr().out)
    assert brief["games"]["used"] == whole["games"]["used"] and brief["games"]["in_more_than_one_part"] == 0
    for split in ("train", "validation", "eval"):
        assert rows(tmp_path / "m", split) == rows(tmp_path / "w", split), split
    assert (tmp_path / "m" / "games.keys").read_bytes() == (tmp_path / "w" / "games.keys").read_bytes()
    merged = json.loads((tmp_path / "m" / "stats.json").read_text())
    assert merged["examples"]["train"]["total"] == whole["examples"]["train"]["total"] > 0
    assert merged["files"]["train"] == 2 and [p["path"] for p in merged["parts"]] == [str(tmp_path / "a"), str(tmp_path / "b")]

    # A game in both parts is counted (and warned about), not removed.
    build("b3", [second])
    again = merge_datasets([tmp_path / "a", tmp_path / "b3"], tmp_path / "m3")
    assert again["games"]["in_more_than_one_part"] == 5
    # Parts must share their example settings; a merge needs two parts and a free output folder.
    build("c", [second], f"exclude=[{tmp_path / 'a'}]", "examples.positions_per_game=1")
    with pytest.raises(DataError, match="other 'examples' settings"):
        merge_datasets([tmp_path / "a", tmp_path / "c"], tmp_path / "m4")
    with pytest.raises(DataError, match="two or more"):
        merge_datasets([tmp_path / "a"], tmp_path / "m5")
    with pytest.raises(DataError, match="exists and is not empty"):
        merge_datasets([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert not (tmp_path / "m4").exists()
    # A bad exclude says what was wrong.
    with pytest.raises(DataError, match="exclude: .*no such file or folder"):
        build("x", [second], f"exclude=[{tmp_path / 'nowhere'}]")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "stats.json").write_text("{}")
    with pytest.raises(DataError, match="without games.keys"):
        build("x", [second], f"exclude=[{tmp_path / 'd'}]")


def test_cli_build_and_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    games = write_laion(tmp_path / "g.parquet", [(SCHOLAR_UCI, "CHECKMATE", "1-0"), (FOOL_UCI, "CHECKMATE", "0-1")])
    out = tmp_path / "ds"
    args = ["dataset", "build", "--source", str(games), "--out", str(out), "--no-progress", "tokenizer=", "workers=1"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["games"]["used"] == 2 and (out / "stats.json").is_file()
    assert main([*args, "examples.position_per_game=2"]) == 2
    assert "unknown config key examples.position_per_game" in capsys.readouterr().err


def test_board_windows_are_cut_from_their_own_tokens(tmp_path: Path, selfplay_dir: Path) -> None:
    """Each board window has its own FEN, so no longer text holds it: it is cut from its own
    whole text's tokens (one encoding) and every cut, checked here, equals direct tokenization."""
    from transformers import AutoTokenizer

    bundled = Path(__file__).resolve().parents[2] / "engine" / "data" / "bundled-model"
    cfg = load_dataset_config(
        "configs/dataset/scratch-windows.yaml",
        [
            f"sources=[{{path: {selfplay_dir}}}]",
            f"out={tmp_path / 'ds'}",
            "workers=1",
            "max_games=6",
            "examples.positions_per_game=0",
            "split.validation_fraction=0",
            "verify_tokens_every=1",
            f"tokenizer={bundled}",
        ],
    )
    stats = build_dataset(cfg, progress_bar=False)
    tk = stats["tokenizer"]
    assert tk["verify_mismatches"] == 0 and tk["direct"] == 0
    assert tk["verified"] == tk["fast_cut"] >= stats["examples"]["train"]["total"] > 30
    tok = AutoTokenizer.from_pretrained(str(bundled))
    got = rows(tmp_path / "ds", "train")
    assert sum("[FEN " in r["prompt"] for r in got) > 20  # all but each game's first window
    for r in got:
        full = tok(r["prompt"] + r["completion"]).input_ids + ([tok.eos_token_id] if r["eos"] else [])
        assert r["input_ids"] == full
        assert r["input_ids"][: r["prompt_tokens"]] == tok(r["prompt"]).input_ids
