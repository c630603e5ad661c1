"""The prompt text, checked exactly: it is what the model reads at train and play time."""

from __future__ import annotations

import io
import random

import chess
import chess.pgn
import pytest

from engine.errors import PromptError
from engine.prompt import PromptBuilder, PromptTemplate, movetext, play_variables

HEADER_WHITE_ENGINE = (
    '[Event "Rated Classical game"]\n'
    '[Site "https://lichess.org"]\n'
    '[White "mistral-chess"]\n'
    '[Black "?"]\n'
    '[Result "1-0"]\n'
    '[WhiteElo "2800"]\n'
)


def _builder() -> PromptBuilder:
    return PromptBuilder(PromptTemplate.load("pgn-base"))


def _vars(board: chess.Board) -> dict[str, object]:
    return play_variables(board, engine_elo=2800)


def test_start_position_white_to_move() -> None:
    board = chess.Board()
    p = _builder().from_board(board, _vars(board))
    assert p.text == HEADER_WHITE_ENGINE + "\n1."
    assert p.add_special_tokens is True
    assert p.completion("e4") == " e4"


def test_black_to_move_after_moves_ends_after_white_move() -> None:
    board = chess.Board()
    for san in ["e4", "e5", "Nf3"]:
        board.push_san(san)
    p = _builder().from_board(board, _vars(board))
    # Engine plays Black: it is the side conditioned to win, and Black's Elo is written.
    assert p.text == (
        '[Event "Rated Classical game"]\n[Site "https://lichess.org"]\n[White "?"]\n'
        '[Black "mistral-chess"]\n[Result "0-1"]\n[BlackElo "2800"]\n\n1. e4 e5 2. Nf3'
    )


def test_fen_start_black_to_move_writes_setup_and_ellipsis() -> None:
    # A position from move 12 with Black to move: [SetUp]/[FEN] and "12..." at the end.
    fen = "r1bqkb1r/pppp1ppp/2n2n2/4p3/2B1P3/5N2/PPPP1PPP/RNBQK2R b KQkq - 3 12"
    board = chess.Board(fen)
    p = _builder().from_board(board, _vars(board))
    assert p.text.endswith(f'[SetUp "1"]\n[FEN "{fen}"]\n\n12...')
    board.push_san("Be7")
    board.push_san("O-O")
    p2 = _builder().from_board(board, _vars(board))
    assert p2.text.endswith(f'[FEN "{fen}"]\n\n12... Be7 13. O-O')


def test_promotion_check_and_mate_san_in_movetext() -> None:
    # Underpromotion with check, then the text after it.
    board = chess.Board("8/P4k2/8/8/8/8/8/4K3 w - - 0 40")
    board.push_san("a8=N")
    assert _builder().from_board(board, _vars(board)).text.endswith("40. a8=N")
    board = chess.Board()
    for san in ["f3", "e5", "g4", "Qh4#"]:
        board.push_san(san)
    assert _builder().from_board(board, {}).text.endswith("1. f3 e5 2. g4 Qh4# 3.")


def test_en_passant_and_castling_movetext() -> None:
    board = chess.Board()
    for san in ["e4", "Nf6", "e5", "d5", "exd6", "e6", "Nf3", "Be7", "Bc4", "O-O", "O-O"]:
        board.push_san(san)
    text = _builder().from_board(board, {}).text
    assert text.endswith("1. e4 Nf6 2. e5 d5 3. exd6 e6 4. Nf3 Be7 5. Bc4 O-O 6. O-O")


def _random_board(rng: random.Random, plies: int) -> chess.Board:
    """A game of up to ``plies`` uniformly random legal moves (shorter when it ends)."""
    board = chess.Board()
    for _ in range(plies):
        moves = list(board.legal_moves)
        if not moves:
            break
        board.push(rng.choice(moves))
    return board


def test_movetext_matches_python_chess_exporter_on_random_games() -> None:
    rng = random.Random(7)
    for _ in range(30):
        board = _random_board(rng, rng.randrange(1, 120))
        game = chess.pgn.Game.from_board(board)
        exported = game.accept(chess.pgn.StringExporter(headers=False, columns=None, comments=False))
        expected = exported.rsplit(" ", 1)[0]  # drop the result token
        root, sans = board.root(), []
        replay = root.copy()
        for mv in board.move_stack:
            sans.append(replay.san(mv))
            replay.push(mv)
        assert movetext(sans, open_end=False) == expected


def test_header_values_are_escaped_and_empty_tags_dropped() -> None:
    b = PromptBuilder(PromptTemplate.load("pgn-base"))
    text = b.pgn([], variables={"white": 'Bob "the" \\ Bot', "black": "", "result": "*"})
    assert '[White "Bob \\"the\\" \\\\ Bot"]' in text
    assert "[Black" not in text  # empty value -> tag left out
    assert "[WhiteElo" not in text


def test_instruct_template_wraps_pgn_in_chat_template(mistral_tokenizer_dir) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(mistral_tokenizer_dir))
    b = PromptBuilder(PromptTemplate.load("pgn-instruct"), tok)
    board = chess.Board()
    board.push_san("d4")
    p = b.from_board(board, play_variables(board, engine_elo=0))
    assert p.text.startswith("<s>[INST] Continue this chess game. Answer with the next move only, in SAN.\n\n[Event")
    assert p.text.endswith("1. d4 [/INST]")
    assert p.add_special_tokens is False


def test_instruct_template_without_chat_template_is_a_clear_error(mistral_tokenizer_dir) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(mistral_tokenizer_dir))
    tok.chat_template = None
    with pytest.raises(PromptError, match="has none"):
        PromptBuilder(PromptTemplate.load("pgn-instruct"), tok)


def test_unknown_template_and_bad_keys(tmp_path) -> None:
    with pytest.raises(PromptError, match="unknown prompt template 'nope'.*pgn-base"):
        PromptTemplate.load("nope")
    bad = tmp_path / "t.yaml"
    bad.write_text("name: x\nkind: base\nheaderz: {}\n")
    with pytest.raises(PromptError, match="unknown template key"):
        PromptTemplate.load(str(bad))
    bad.write_text("name: x\nkind: chat\n")
    with pytest.raises(PromptError, match="kind must be"):
        PromptTemplate.load(str(bad))


def test_custom_template_file_controls_tags(tmp_path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text('name: mine\nkind: base\nheaders:\n  White: "{white}"\n  Black: "{black}"\n  Result: "{result}"\n')
    b = PromptBuilder(PromptTemplate.load(str(f)))
    g = chess.pgn.read_game(io.StringIO("1. e4 *"))
    assert g is not None
    board = g.end().board()
    assert b.from_board(board, {"white": "A", "black": "B", "result": "*"}).text == (
        '[White "A"]\n[Black "B"]\n[Result "*"]\n\n1. e4'
    )


def test_legal_sans_equals_python_chess_san() -> None:
    """The player's SAN of all legal moves at once is python-chess's, on positions with
    ambiguous knights, rooks and queens, promotions, castling, en passant, checks and mates."""
    from engine.prompt import legal_sans

    fens = [
        "7k/8/8/8/8/2N3N1/8/K1N3N1 w - - 0 1",  # four knights: file, rank and both
        "R6R/8/8/8/8/8/8/R3K2k w Q - 0 1",  # rooks on a file and a rank, castling
        "1n5k/P7/8/8/8/8/6K1/Q6Q w - - 0 1",  # promotions with capture and check, two queens
        "rnbqkbnr/ppp1p1pp/8/3pPp2/8/8/PPPP1PPP/RNBQKBNR w KQkq f6 0 3",  # en passant
        "6k1/5ppp/8/8/8/8/8/R5K1 w - - 0 1",  # Ra8#
        "Q2Q4/8/8/8/8/8/8/Q1k1K3 w - - 0 1",  # three queens reaching the same squares
    ]
    boards = [chess.Board(f) for f in fens]
    rng = random.Random(3)
    for _ in range(200):  # random games, sampled along the way
        boards.append(_random_board(rng, rng.randrange(1, 160)))
    seen = 0
    for board in boards:
        legal = list(board.legal_moves)
        before = board.fen()
        assert legal_sans(board, legal) == [board.san(m) for m in legal], before
        assert board.fen() == before  # the board is left as it was
        seen += len(legal)
    assert seen > 500


def test_only_moves_that_may_give_check_are_pushed() -> None:
    """The pre-test of legal_sans never misses a move that gives check (python-chess's
    gives_check over all legal moves of 300 positions along random games, with castling,
    en passant, promotions and discovered checks among them) and lets most moves skip
    the push."""
    from engine.prompt import _may_give_check

    rng = random.Random(5)
    moves = checking = flagged = 0
    for _ in range(300):
        board = _random_board(rng, rng.randrange(1, 150))
        test = _may_give_check(board)
        for m in board.legal_moves:
            kind = board.piece_type_at(m.from_square)
            assert kind is not None
            gives = board.gives_check(m)
            flag = test(m, kind)
            assert flag or not gives, (board.fen(), m.uci())
            moves += 1
            checking += gives
            flagged += flag
    assert checking > 100
    assert flagged < moves / 3
