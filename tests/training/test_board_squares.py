"""Board squares (model.tokenizer_board_squares): the chess BPE writes a FEN's board one
token a square, leaves every other text as it was, and the engine's incremental
tokenization still gives the whole-text tokens."""

from __future__ import annotations

import random
import re
from pathlib import Path

import chess
import pytest

from engine.errors import ConfigError
from engine.tokentree import ContextEncoder
from training.chess_tokenizer import has_board_squares, with_board_squares
from training.config import DatasetConfig, ExamplesConfig, load_train_config
from training.errors import DataError, TrainingError
from training.examples import ExampleMaker
from training.sources import Game, moves_key, replay_uci


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain chess BPE (as v3-v13 had), trained here on windowed prompts of random games."""
    from training.chess_tokenizer import build_chess_tokenizer

    texts = [p + c for seed in range(20, 26) for p, c in windowed_prompts(random_game(seed, 80), 8)]
    folder = tmp_path_factory.mktemp("plain-bpe")
    build_chess_tokenizer(iter(texts), 600).save_pretrained(str(folder))
    return folder


def load(folder: Path):  # noqa: ANN201
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def tokenizers(plain_dir: Path):  # noqa: ANN201
    return load(plain_dir), with_board_squares(load(plain_dir))


def board_tokens(tok, text: str) -> list[str]:  # noqa: ANN001
    """The tokens of the FEN board field in ``text`` (by their offsets in the original text)."""
    m = re.search(r'\[FEN "([^ ]+) [wb] ', text)
    assert m
    enc = tok(text, return_offsets_mapping=True)
    tokens = tok.convert_ids_to_tokens(enc.input_ids)
    return [t for t, (a, b) in zip(tokens, enc.offset_mapping, strict=True) if b > a and a >= m.start(1) and b <= m.end(1)]


def random_game(seed: int, plies: int = 60) -> list[str]:
    rng = random.Random(seed)
    board = chess.Board()
    moves = []
    while len(moves) < plies and not board.is_game_over():
        move = rng.choice(list(board.legal_moves))
        moves.append(move.uci())
        board.push(move)
    return moves


def windowed_prompts(uci: list[str], window: int) -> list[tuple[str, str]]:
    """(prompt, played move's completion) at every ply, as the data builder writes them."""
    sans, _ = replay_uci(uci)
    game = Game("mem", 0, sans, "*", moves_key(chess.STARTING_FEN, uci))
    maker = ExampleMaker(DatasetConfig(examples=ExamplesConfig(positions_per_game=0, window_plies=window)))  # type: ignore[arg-type]
    return [(e.prompt.text, e.completion) for e in maker.examples(game)]


def expanded(board_field: str) -> str:
    return re.sub(r"[2-8]", lambda m: "1" * int(m.group()), board_field)


def test_a_fen_board_is_71_tokens_one_a_square(tokenizers) -> None:  # noqa: ANN001
    plain, squares = tokenizers
    assert has_board_squares(squares) and not has_board_squares(plain)
    seen = 0
    for seed in range(6):
        for prompt, _ in windowed_prompts(random_game(seed), 8):
            m = re.search(r'\[FEN "([^ ]+) ([wb]) ', prompt)
            if not m:
                continue
            seen += 1
            board = board_tokens(squares, prompt)
            assert len(board) == 71 and all(len(t) == 1 for t in board), board
            assert "".join(board) == expanded(m.group(1))
            assert len(board_tokens(plain, prompt)) < 71  # run-length digits and merges
            # Everything after the FEN tag (the move text) is tokenized as before.
            body = prompt[prompt.index("\n\n") :]
            assert squares(body, add_special_tokens=False).input_ids == plain(body, add_special_tokens=False).input_ids
    assert seen >= 30


def test_move_text_without_a_fen_is_unchanged(tokenizers) -> None:  # noqa: ANN001
    plain, squares = tokenizers
    for prompt, completion in windowed_prompts(random_game(11, 120), 0)[::7]:
        assert "[FEN" not in prompt
        text = prompt + completion + " b5 Kb1 Rb8 1-0"  # words that look like "b" and squares
        assert squares(text).input_ids == plain(text).input_ids


def test_the_engine_encoder_gives_whole_text_tokens(tokenizers) -> None:  # noqa: ANN001
    _, squares = tokenizers
    enc = ContextEncoder(squares)
    uci = random_game(3, 70)
    board = chess.Board()
    for ply, (prompt, completion) in enumerate(windowed_prompts(uci, 6)):
        assert enc.encode(prompt, add_special_tokens=True) == squares(prompt).input_ids
        cands = [" " + board.san(m) for m in board.legal_moves]
        got = enc.encode_candidates(prompt, cands, add_special_tokens=True)
        assert got == [squares(prompt + c).input_ids for c in cands]
        assert completion in cands
        board.push_uci(uci[ply])
    assert enc.grown > 0  # the incremental path was taken, not only whole texts


def test_only_the_chess_bpe_can_be_rewritten(tiny_model_dir: Path, tmp_path: Path) -> None:
    mistral = load(tiny_model_dir)
    with pytest.raises(DataError, match="chess BPE"):
        with_board_squares(mistral)
    with pytest.raises(ConfigError, match="tokenizer_board_squares"):
        load_train_config(None, ["model.init=scratch", "model.tokenizer=mistral", "lora.enabled=false",
                                 "model.tokenizer_board_squares=true", "data.path=x"])  # fmt: skip
    # A pretrained model with the Mistral tokenizer is refused when the tokenizer is resolved.
    from training.modeling import resolve_tokenizer

    cfg = load_train_config(None, [f"model.path={tiny_model_dir}", "model.tokenizer_board_squares=true", "data.path=x"])
    with pytest.raises(TrainingError, match="chess BPE"):
        resolve_tokenizer(cfg, tmp_path)


def test_the_rewrite_is_saved_with_the_tokenizer(plain_dir: Path, tmp_path: Path) -> None:
    squares = with_board_squares(load(plain_dir))
    assert with_board_squares(squares) is squares and has_board_squares(squares)  # idempotent
    squares.save_pretrained(str(tmp_path / "tok"))
    assert has_board_squares(load(tmp_path / "tok"))


def test_a_pretrained_chess_model_goes_on_with_board_squares(plain_dir: Path, tmp_path: Path) -> None:
    from training.modeling import resolve_tokenizer

    cfg = load_train_config(None, [f"model.path={plain_dir}", "model.tokenizer_board_squares=true", "lora.enabled=false",
                                   "data.path=x"])  # fmt: skip
    tok = resolve_tokenizer(cfg, tmp_path / "run")
    plain = load(plain_dir)
    assert has_board_squares(tok) and not has_board_squares(plain) and tok.get_vocab() == plain.get_vocab()
    # Without the key the model's own (plain) tokenizer is used as it is.
    cfg = load_train_config(None, [f"model.path={plain_dir}", "lora.enabled=false", "data.path=x"])
    assert not has_board_squares(resolve_tokenizer(cfg, tmp_path / "run2"))


def test_a_new_chess_bpe_learns_its_merges_on_board_squares() -> None:
    from training.chess_tokenizer import build_chess_tokenizer

    texts = [p + c for seed in range(3) for p, c in windowed_prompts(random_game(seed), 4)]
    tok = build_chess_tokenizer(iter(texts), 400, board_squares=True)
    assert has_board_squares(tok)
    for prompt in [p for p in texts if "[FEN" in p][:20]:
        board = board_tokens(tok, prompt)
        assert len(board) == 71 and all(len(t) == 1 for t in board)
