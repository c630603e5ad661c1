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

BUNDLED = Path(__file__).resolve().parents[2] / "engine" / "data" / "bundled-model"


def plain_tokenizer():  # noqa: ANN201
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(BUNDLED))


@pytest.fixture(scope="module")
def tokenizers():  # noqa: ANN201
    return plain_tokenizer(), with_board_squares(plain_tokenizer())


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
            tokens = squares.convert_ids_to_tokens(squares(prompt).input_ids)
            i = tokens.index('Ġ"', tokens.index("N"))  # the FEN tag's opening quote
            board = tokens[i + 1 : i + 72]
            assert all(len(t) == 1 for t in board), board
            assert "".join(board) == expanded(m.group(1))
            assert tokens[i + 72 : i + 74] == ["Ġ", m.group(2)]
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
    from transformers import AutoTokenizer

    mistral = AutoTokenizer.from_pretrained(str(tiny_model_dir))
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
    # The rewritten tokenizer survives a save and a load (it lives in tokenizer.json).
    squares = with_board_squares(plain_tokenizer())
    squares.save_pretrained(str(tmp_path / "tok"))
    assert has_board_squares(AutoTokenizer.from_pretrained(str(tmp_path / "tok")))


def test_a_pretrained_chess_model_goes_on_with_board_squares(tmp_path: Path) -> None:
    from training.modeling import resolve_tokenizer

    cfg = load_train_config(None, [f"model.path={BUNDLED}", "model.tokenizer_board_squares=true", "lora.enabled=false",
                                   "data.path=x"])  # fmt: skip
    tok = resolve_tokenizer(cfg, tmp_path)
    plain = plain_tokenizer()
    assert has_board_squares(tok) and tok.get_vocab() == plain.get_vocab()
