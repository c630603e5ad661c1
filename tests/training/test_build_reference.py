"""The optimised build against a straightforward reference: every example of every game,
text and token ids, equals plain python-chess replay (``parse_uci``/``is_legal``/``san``/
``push``) through the engine's prompt module and whole-text tokenization.

Games: Stockfish self-play (mates, checks, captures), a hand-made game with both
castlings, en passant for both sides, under-promotions with capture and SAN
disambiguation, the two short mates, a PGN game from a FEN with Black to move, and
the corrupt records of the fixtures (which must give no examples)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import chess
import chess.pgn
import pyarrow.parquet as pq
import pytest

from engine.prompt import PromptBuilder, PromptTemplate, play_variables
from tests.training.conftest import CORRUPT_ROWS, FOOL_UCI, SCHOLAR_UCI, write_laion
from training.config import load_dataset_config
from training.dataset import build_dataset, load_backend_tokenizer
from training.examples import words_tokenize_alone

# e.p. (e5f6, b4a3), =N and =R with capture, O-O-O, O-O, check, Nbd2 (disambiguation).
SPECIAL_UCI = [
    "e2e4", "d7d5", "e4e5", "f7f5", "e5f6", "b8c6", "f6g7", "c8f5", "g7h8n", "d8d6", "g1f3", "e8c8", "f1b5",
    "a7a6", "e1g1", "a6b5", "h8f7", "d6h2", "g1h2", "d8d7", "f1e1", "c6b4", "d2d4", "b4c2", "d1c2", "f5c2",
    "b1d2", "g8f6", "e1e3", "b5b4", "a2a4", "b4a3", "d2b3", "a3b2", "b3c5", "b2a1r", "c5d7", "c8d7",
]

# Black to move from a set-up position (the scholar's mate after 1. e4 e5 2. Qh5).
FEN_PGN = """[Event "?"]
[White "A"]
[Black "B"]
[Result "1-0"]
[SetUp "1"]
[FEN "rnbqkbnr/pppp1ppp/8/4p2Q/4P3/8/PPPP1PPP/RNB1KBNR b KQkq - 1 2"]

2... Nc6 3. Bc4 Nf6 4. Qxf7# 1-0

"""


def special_game() -> list[str]:
    """The hand-made opening, then 60 seeded random legal plies (more promotions, checks)."""
    board = chess.Board()
    for uci in SPECIAL_UCI:
        board.push_uci(uci)
    rng = random.Random(7)
    moves = list(SPECIAL_UCI)
    for _ in range(60):
        legal = sorted(board.legal_moves, key=chess.Move.uci)
        if not legal:
            break
        move = rng.choice(legal)
        moves.append(move.uci())
        board.push(move)
    return moves


@pytest.fixture(scope="module")
def games_dir(tmp_path_factory: pytest.TempPathFactory, selfplay_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("reference-games")
    for f in selfplay_dir.glob("*.parquet"):
        (folder / f.name).write_bytes(f.read_bytes())
    rows: list[tuple[list[str], str | None, str]] = [
        (special_game(), None, "1/2-1/2"),
        (SCHOLAR_UCI, "CHECKMATE", "1-0"),
        (FOOL_UCI, "CHECKMATE", "0-1"),
    ]
    rows += [(m, t, r) for m, t, r, _ in CORRUPT_ROWS]
    write_laion(folder / "zz-special.parquet", rows)
    (folder / "fen-start.pgn").write_text(FEN_PGN)
    return folder


def reference_games(folder: Path) -> dict[str, tuple[chess.Board, str]]:
    """Location -> (final board, result) of every usable game, by plain python-chess."""
    out: dict[str, tuple[chess.Board, str]] = {}
    for path in sorted(folder.glob("*.parquet")):
        t = pq.read_table(path).to_pydict()
        for i, (moves, term, result) in enumerate(
            zip(t["Moves"], t["Termination"], t["Result"], strict=True)
        ):
            board = chess.Board()
            try:
                for uci in moves:
                    move = board.parse_uci(uci)  # raises for illegal moves
                    board.push(move)
            except ValueError:
                continue
            ok_result = result in ("1-0", "0-1", "1/2-1/2")
            ok_end = (
                term is None
                or (term == "CHECKMATE" and board.is_checkmate())
                or (term == "STALEMATE" and board.is_stalemate())
            )
            if ok_result and ok_end:
                out[f"{path}:{i}"] = (board, result)
    with (folder / "fen-start.pgn").open() as f:
        game = chess.pgn.read_game(f)
    assert game is not None
    out[f"{folder / 'fen-start.pgn'}:0"] = (game.end().board(), game.headers["Result"])
    return out


def reference_examples(
    folder: Path, kind: str, tok: Any, engine_elo: int
) -> dict[tuple[str, int], dict[str, Any]]:
    builder = PromptBuilder(PromptTemplate.load("pgn-base"))
    exporter = dict(headers=False, variations=False, comments=False, columns=None)
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for where, (final, result) in reference_games(folder).items():
        root = final.root()
        game = chess.pgn.Game.from_board(final)
        game.headers["Result"] = result
        plain = game.accept(chess.pgn.StringExporter(**exporter))  # "1. e4 e5 ... 1-0"
        board = root.copy()
        for ply, move in enumerate(final.move_stack):
            prompt = builder.from_board(board, play_variables(board, result=result, engine_elo=engine_elo))
            if kind == "next_move":
                completion, eos = " " + board.san(move), False
            else:
                body = prompt.text[prompt.text.index("\n\n") + 2 :]
                assert plain.startswith(body)
                completion, eos = plain[len(body) :], True
            full = tok(prompt.text + completion).input_ids
            head = tok(prompt.text).input_ids
            assert full[: len(head)] == head  # the prompt's tokens start the example's
            out[(where, ply)] = {
                "prompt": prompt.text,
                "completion": completion,
                "eos": eos,
                "input_ids": full + ([tok.eos_token_id] if eos else []),
                "prompt_tokens": len(head),
            }
            board.push(move)
    return out


@pytest.mark.parametrize("kind", ["next_move", "continuation"])
def test_build_equals_plain_reference(
    tmp_path: Path, games_dir: Path, mistral_tokenizer_dir: Path, kind: str
) -> None:
    from transformers import AutoTokenizer

    cfg = load_dataset_config(
        None,
        [
            f"sources=[{{path: {games_dir}}}]",
            f"out={tmp_path / 'ds'}",
            f"tokenizer={mistral_tokenizer_dir}",
            "workers=2",
            "batch_games=7",
            "examples.positions_per_game=0",
            f"examples.kinds={{{kind}: 1}}",
            "split.validation_fraction=0",
            "verify_tokens_every=0",  # no sampled check: the fast paths alone must be right
            "max_length=100000",
        ],
    )
    stats = build_dataset(cfg, progress_bar=False)
    tok = AutoTokenizer.from_pretrained(str(mistral_tokenizer_dir))
    want = reference_examples(games_dir, kind, tok, cfg.players.engine_elo)
    got: dict[tuple[str, int], dict[str, Any]] = {}
    for f in sorted((tmp_path / "ds").glob("train-*.parquet")):
        for r in pq.read_table(f).to_pylist():
            assert r["kind"] == kind
            got[(r["game"], r["ply"])] = {
                k: r[k] for k in ("prompt", "completion", "eos", "input_ids", "prompt_tokens")
            }
    assert got.keys() == want.keys()
    for key, row in want.items():
        assert got[key] == row, key
    assert stats["games"]["corrupt"] == _kinds()
    assert stats["tokenizer"]["fast_words"] == stats["tokenizer"]["fast_cut"] == len(want)
    assert stats["tokenizer"]["direct"] == 0
    # The special moves are in there.
    texts = " ".join(r["prompt"] + r["completion"] for r in got.values())
    for san in (
        "O-O-O",
        "O-O ",
        "exf6",
        "bxa3",
        "gxh8=N",
        "bxa1=R",
        "Nbd2",
        "Qxh2+",
        "Qxf7#",
        "Qh4#",
        "2... Nc6",
    ):
        assert san in texts, san


def _kinds() -> dict[str, int]:
    out: dict[str, int] = {}
    for *_, kind in CORRUPT_ROWS:
        out[kind] = out.get(kind, 0) + 1
    return out


def test_word_tokenization_needs_its_proof(mistral_tokenizer_dir: Path) -> None:
    """The word path is taken only when no vocabulary token can span a space."""
    from tokenizers import Tokenizer

    backend, _ = load_backend_tokenizer(mistral_tokenizer_dir)
    assert words_tokenize_alone(backend)
    spec = json.loads(backend.to_str())
    spec["model"]["vocab"]["e4\u2581"] = len(spec["model"]["vocab"])  # a token that would cross " "
    assert not words_tokenize_alone(Tokenizer.from_str(json.dumps(spec)))
    spec = json.loads(backend.to_str())
    spec["pre_tokenizer"]["split"] = True
    assert not words_tokenize_alone(Tokenizer.from_str(json.dumps(spec)))
