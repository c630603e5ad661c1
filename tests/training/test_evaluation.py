"""Why a generated move is not legal: training.evaluation.classify_output."""

from __future__ import annotations

import dataclasses

import chess
import pytest

from engine.player import first_move_token
from training.errors import DataError
from training.evaluation import OUTPUT_CLASSES, classify_output

START = chess.STARTING_FEN
# White: Ke1, Re2 pinned by Black's Re8; Black king on h8. White to move.
PIN = "4r2k/8/8/8/8/8/4R3/4K3 w - - 0 1"
# White king on e1 in check from Black's Qe7 (e-file open); White has Nb1, Ra1.
CHECK = "4k3/4q3/8/8/8/8/8/RN2K3 w Q - 0 1"
# Two white knights (b1, f1) both reach d2; a rook on a1; White's king on h1.
TWO_KNIGHTS = "4k3/8/8/8/8/8/8/RN3N1K w - - 0 1"


@pytest.mark.parametrize(
    ("fen", "text", "expected"),
    [
        (START, " e4", "legal"),
        (START, " 1. e4", "legal"),  # a repeated move number
        (START, " e2e4", "legal"),  # UCI is read too
        (START, " 0-1", "resign"),  # White to move writes its own loss
        (START, " 1-0", "result"),
        (START, " 1/2-1/2", "result"),
        (START, "", "no-move"),
        (START, " hello", "no-move"),
        (START, " O-O", "castling-not-allowed"),
        (START, " Qh5", "unreachable"),  # the queen is boxed in
        (START, " e5", "unreachable"),  # a pawn cannot go three squares
        (START, " exd3", "unreachable"),  # a pawn capture onto an empty square
        (START, " Nd2", "own-piece-on-square"),  # d2 holds White's own pawn
        ("4k3/8/8/8/8/8/8/4K3 w - - 0 1", " Nf3", "no-such-piece"),
        (TWO_KNIGHTS, " Nd2", "ambiguous"),
        (TWO_KNIGHTS, " Nbd2", "legal"),
        (TWO_KNIGHTS, " Nhd2", "wrong-disambiguation"),  # a knight on the h-file? none reaches d2
        (PIN, " Ra2", "pinned-piece"),
        (PIN, " Re7", "legal"),  # along the pin
        ("4k3/8/8/8/8/8/3r4/4K3 w - - 0 1", " Kf1", "legal"),
        ("4k3/8/8/8/8/8/3r4/4K3 w - - 0 1", " Kd1", "king-into-check"),  # the rook holds the d-file
        ("4k3/8/8/8/8/8/3r4/4K3 w - - 0 1", " Kf2", "king-into-check"),  # and the second rank
        (CHECK, " Nc3", "ignores-check"),
        (CHECK, " Kd1", "legal"),
    ],
)
def test_classify_output(fen: str, text: str, expected: str) -> None:
    assert classify_output(chess.Board(fen), text) == expected


def test_classes_are_listed() -> None:
    # Every answer above is one of the listed classes, which a report prints in order.
    assert len(set(OUTPUT_CLASSES)) == len(OUTPUT_CLASSES)
    board = chess.Board(PIN)
    assert classify_output(board, " Ra2") in OUTPUT_CLASSES


@pytest.mark.parametrize(
    ("text", "token"),
    [(" e4 e5", "e4"), (" 12. Nf3", "Nf3"), (" 12...Nf6", "Nf6"), (" 12.", None), ("   ", None), (" 1-0", "1-0")],
)
def test_first_move_token(text: str, token: str | None) -> None:
    assert first_move_token(text) == token


def _legal_rate_module():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "legal_rate", Path(__file__).resolve().parents[2] / "benchmarks" / "legal_rate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_window_ply_counts_from_the_prompts_fen() -> None:
    legal_rate = _legal_rate_module()
    board = chess.Board()
    for san in ["e4", "e5", "Nf3"]:
        board.push_san(san)
    # No [FEN] tag: plies from the standard start.
    assert legal_rate.window_ply('[Event "?"]\n\n1. e4 e5 2. Nf3', board.fen()) == 3
    # A window that starts after 1. e4 (Black to move): two plies later.
    root = chess.Board()
    root.push_san("e4")
    prompt = f'[SetUp "1"]\n[FEN "{root.fen()}"]\n\n1... e5 2. Nf3'
    assert legal_rate.window_ply(prompt, board.fen()) == 2
    assert legal_rate.window_ply(prompt, root.fen()) == 0


def test_breakdown_counts_classes_and_plies() -> None:
    from training.data import EvalPosition

    legal_rate = _legal_rate_module()
    after_e4 = chess.Board()
    after_e4.push_san("e4")
    positions = [
        EvalPosition('[Event "?"]\n\n1.', " e4", START),
        EvalPosition('[Event "?"]\n\n1.', " e4", START),
        EvalPosition('[Event "?"]\n\n1. e4', " e5", after_e4.fen()),
    ]
    outputs = [" e4", " Qh5", " e5"]
    kinds = legal_rate.output_classes(positions, outputs)
    assert kinds == ["legal", "unreachable", "legal"]
    out = legal_rate.breakdown(positions, outputs, kinds, examples=5)
    assert out["classes"] == {"legal": 2, "unreachable": 1}
    assert out["by_ply_in_window"] == {
        "0": {"positions": 2, "legal_rate": 0.5},
        "1": {"positions": 1, "legal_rate": 1.0},
    }
    assert [e["output"] for e in out["illegal_examples"]] == [" Qh5"]


def test_generation_outputs_agree_with_the_legal_rate() -> None:
    """The texts generation_metrics hands back are the ones it counted: classifying them
    gives its legal rate (the bundled model on early positions of a real game)."""
    torch = pytest.importorskip("torch")
    from pathlib import Path

    from transformers import AutoTokenizer

    from engine.int8store import load_causal_lm
    from engine.prompt import PromptBuilder, PromptTemplate
    from training.data import EvalPosition
    from training.evaluation import generation_metrics

    folder = Path(__file__).resolve().parents[2] / "engine" / "data" / "bundled-model"
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = load_causal_lm(folder, dtype=torch.float32)
    builder = PromptBuilder(PromptTemplate.load("pgn-base"), tok)
    board, sans, positions = chess.Board(), [], []
    for uci in ["e2e4", "c7c5", "g1f3", "d7d6", "d2d4", "c5d4"]:
        positions.append(EvalPosition(builder.from_sans(sans).text, "", board.fen()))
        move = chess.Move.from_uci(uci)
        sans.append(board.san(move))
        board.push(move)
    outputs: list[str] = []
    m = generation_metrics(
        model, tok, positions, device=torch.device("cpu"), max_new_tokens=4, batch_size=4, outputs=outputs
    )
    assert len(outputs) == len(positions)
    legal = sum(classify_output(chess.Board(p.fen), " " + t) == "legal" for p, t in zip(positions, outputs, strict=True))
    assert m["legal_rate"] == pytest.approx(legal / len(positions))


def test_exclude_games_leaves_out_the_positions_of_those_games(tmp_path, selfplay_dir) -> None:
    """benchmarks/legal_rate.py --exclude-games: positions whose game occurs in the given sources
    go, the rest stay; a data set whose source files are gone is a clear error."""
    import pyarrow.parquet as pq

    from tests.training.conftest import write_laion
    from training.config import load_dataset_config
    from training.data import load_eval_positions
    from training.dataset import build_dataset

    legal_rate = _legal_rate_module()
    cfg = load_dataset_config(
        "configs/dataset/scratch-windows.yaml",
        [f"sources=[{{path: {selfplay_dir}}}]", f"out={tmp_path / 'ds'}", "workers=1", "split.validation_fraction=0.5"],
    )
    build_dataset(cfg, progress_bar=False)
    positions = load_eval_positions(tmp_path / "ds", 10_000)
    games = sorted({p.game for p in positions})
    assert len(games) >= 4 and all(":" in g for g in games)
    path, _, index = games[0].rpartition(":")
    row = pq.read_table(path).slice(int(index), 1).to_pylist()[0]
    (tmp_path / "trained").mkdir()
    trained = write_laion(tmp_path / "trained" / "games.parquet", [(row["Moves"], row["Termination"], row["Result"])])
    kept = legal_rate.unseen_positions(positions, [str(trained)])
    assert [p for p in positions if p.game != games[0]] == kept and len(kept) < len(positions)
    assert legal_rate.unseen_positions(positions, [str(tmp_path / "trained")]) == kept  # a folder: its parquet files
    # A data set built from the games' packed copy: positions point into the .mcg file.
    from training.packgames import pack_games

    pack_games([selfplay_dir], tmp_path / "games.mcg")
    cfg = load_dataset_config(
        "configs/dataset/scratch-windows.yaml",
        [f"sources=[{{path: {tmp_path / 'games.mcg'}}}]", f"out={tmp_path / 'packed-ds'}", "workers=1",
         "split.validation_fraction=0.5"],
    )  # fmt: skip
    build_dataset(cfg, progress_bar=False)
    packed = load_eval_positions(tmp_path / "packed-ds", 10_000)
    assert all(p.game.startswith(str(tmp_path / "games.mcg")) for p in packed)
    kept_packed = legal_rate.unseen_positions(packed, [str(trained)])
    assert [(p.prompt, p.fen) for p in kept_packed] == [(p.prompt, p.fen) for p in kept]
    moved = [dataclasses.replace(p, game="/nowhere/x.parquet:0") for p in positions]
    with pytest.raises(DataError, match="the source of the data set's games is gone"):
        legal_rate.unseen_positions(moved, [str(trained)])


def test_legal_rate_pairs_models_on_the_same_positions() -> None:
    """benchmarks/legal_rate.py's paired comparison: the discordant positions of each pair and
    the exact McNemar p-value (two-sided binomial test on them)."""
    import math

    mod = _legal_rate_module()

    a = [True] * 90 + [False] * 10
    b = [True] * 80 + [False] * 10 + [True] * 2 + [False] * 8  # b loses 10 of a's, wins back 2
    c = list(a)
    rows = mod.paired({"a": a, "b": b, "c": c})
    assert [(r["a"], r["b"]) for r in rows] == [("a", "b"), ("a", "c"), ("b", "c")]
    ab = rows[0]
    assert (ab["positions"], ab["both_legal"], ab["only_a"], ab["only_b"]) == (100, 80, 10, 2)
    want = 2 * sum(math.comb(12, j) for j in range(3)) / 2**12  # P(X <= 2), X ~ Bin(12, 1/2), doubled
    assert ab["mcnemar_p"] == round(want, 5) and 0.03 < want < 0.04
    assert (rows[1]["only_a"], rows[1]["only_b"], rows[1]["mcnemar_p"]) == (0, 0, 1.0)  # identical answers
    with pytest.raises(ValueError, match="different positions"):
        mod.paired({"a": a, "b": b[:50]})
