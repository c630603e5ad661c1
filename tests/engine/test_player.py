"""Move choice: legal moves always, fallbacks counted, resign and draw policies."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

import chess
import pytest

from engine.config import EngineConfig
from engine.player import Player, parse_model_move, probability_to_cp
from engine.prompt import Prompt
from engine.scoring import LMScorer, Scores

# Positions by FEN, each with what it tests.
PROMOTION = "8/P6k/8/8/8/8/6K1/8 w - - 0 1"  # a7-a8 with four promotion pieces
EN_PASSANT = "rnbqkbnr/ppp1p1pp/8/3pPp2/8/8/PPPP1PPP/RNBQKBNR w KQkq f6 0 3"  # exf6 e.p. legal
CASTLING_BOTH = "r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R w KQkq - 0 1"  # O-O and O-O-O for both
IN_CHECK = "rnb1kbnr/pppp1ppp/8/4p3/6Pq/5P2/PPPPP2P/RNBQKBNR w KQkq - 1 3"  # fool's mate: no moves
CHECK_EVASION = "4k3/8/8/8/8/8/3q4/4K3 w - - 0 1"  # king in check by a queen
STALEMATE = "7k/5Q2/6K1/8/8/8/8/8 b - - 0 1"


class FakeScorer:
    """Scores by a table of SAN preferences and generates scripted text."""

    tokenizer = None

    def __init__(self, prefs: dict[str, float] | None = None, outputs: Sequence[str] = (), fail: bool = False):
        self.prefs = prefs or {}
        self.outputs = list(outputs)
        self.fail = fail
        self.generate_calls = 0
        self.score_calls = 0

    def count_tokens(self, prompt: Prompt) -> int:
        return len(prompt.text) // 4

    def score(self, prompt: Prompt, continuations: Sequence[str], cancel: threading.Event | None = None) -> Scores:
        self.score_calls += 1
        if self.fail:
            raise RuntimeError("CUDA error: device-side assert triggered")
        lps = [self.prefs.get(c.strip(), -10.0) for c in continuations]
        return Scores(lps, [3] * len(lps), 50)

    def generate(self, prompt: Prompt, **kwargs: object) -> tuple[str, int]:
        self.generate_calls += 1
        if self.fail:
            raise RuntimeError("out of memory")
        text = self.outputs.pop(0) if self.outputs else " ???"
        return text, 10


def _cfg(**sections: dict[str, object]) -> EngineConfig:
    cfg = EngineConfig()
    for name, values in sections.items():
        setattr(cfg, name, dataclasses.replace(getattr(cfg, name), **values))
    return cfg


@pytest.mark.parametrize(
    ("fen", "text", "uci", "kind"),
    [
        (chess.STARTING_FEN, " e4 e5", "e2e4", "san"),
        (chess.STARTING_FEN, " 1. Nf3", "g1f3", "san"),
        (chess.STARTING_FEN, "1.d4", "d2d4", "san"),
        (chess.STARTING_FEN, " g1f3", "g1f3", "san"),  # python-chess also reads UCI as SAN
        (PROMOTION, " a8=Q+", "a7a8q", "san"),
        (PROMOTION, " a8=N", "a7a8n", "san"),
        (PROMOTION, " a8=", "a7a8q", "repaired"),  # Acher's `gxh8=` slip
        (PROMOTION, " a8q", "a7a8q", "san"),  # python-chess is lenient here
        (EN_PASSANT, " exf6", "e5f6", "san"),
        (CASTLING_BOTH, " O-O-O", "e1c1", "san"),
        (CASTLING_BOTH, " 0-0", "e1g1", "san"),  # python-chess reads zeros as castling
        (CASTLING_BOTH, " E1G1", "e1g1", "uci"),  # upper-case UCI: second chance
        (chess.STARTING_FEN, " Nf3!?", "g1f3", "repaired"),  # annotation stripped
        (chess.STARTING_FEN, " nf3", "g1f3", "repaired"),
    ],
)
def test_parse_model_move_reads_and_repairs(fen: str, text: str, uci: str, kind: str) -> None:
    move, got_kind = parse_model_move(chess.Board(fen), text)
    assert move is not None and move.uci() == uci
    assert got_kind == kind


@pytest.mark.parametrize(
    ("fen", "text", "kind"),
    [
        (chess.STARTING_FEN, " 0-1", "resign"),  # White to move writing Black's win
        (chess.STARTING_FEN, " 1-0", "result"),
        (chess.STARTING_FEN, " 1/2-1/2", "result"),
        (chess.STARTING_FEN, " {a comment}", "invalid"),
        (chess.STARTING_FEN, " Nf6", "invalid"),  # Black's move while White is to move
        (chess.STARTING_FEN, "", "invalid"),
        (chess.STARTING_FEN, " e5", "invalid"),
        (chess.STARTING_FEN, " 12.", "invalid"),
        # python-chess reads these as the null move; found on the GPU with a random model
        (chess.STARTING_FEN, " --", "invalid"),
        (chess.STARTING_FEN, " 0000", "invalid"),
        (chess.STARTING_FEN, " Z0", "invalid"),
        (chess.STARTING_FEN, " 1. --", "invalid"),
    ],
)
def test_parse_model_move_rejects(fen: str, text: str, kind: str) -> None:
    move, got_kind = parse_model_move(chess.Board(fen), text)
    assert move is None
    assert got_kind == kind


def test_probability_to_cp_is_monotone_and_bounded() -> None:
    assert probability_to_cp(0.5) == 0
    assert probability_to_cp(0.9) == 382
    assert probability_to_cp(0.1) == -382
    assert probability_to_cp(1.0) == 2000


@pytest.mark.parametrize("fen", [chess.STARTING_FEN, PROMOTION, EN_PASSANT, CASTLING_BOTH, CHECK_EVASION])
def test_constrained_plays_the_model_favourite(fen: str) -> None:
    board = chess.Board(fen)
    legal = list(board.legal_moves)
    target = legal[len(legal) // 2]
    scorer = FakeScorer({board.san(target): -0.1})
    d = Player(EngineConfig(), scorer).choose(board)  # type: ignore[arg-type]
    assert d.move == target
    assert d.source == "model"
    assert d.probability is not None and d.probability > 0.5


def test_no_legal_move_gives_none_for_mate_and_stalemate() -> None:
    for fen in (IN_CHECK, STALEMATE):
        d = Player(EngineConfig(), FakeScorer()).choose(chess.Board(fen))  # type: ignore[arg-type]
        assert d.move is None and d.source == "no-legal-move"


def test_single_legal_move_is_played_without_asking_the_model() -> None:
    board = chess.Board("k7/8/8/8/8/8/1r6/K7 w - - 0 1")  # Ka1 can only take the rook: Kxb2
    legal = list(board.legal_moves)
    assert len(legal) == 1
    scorer = FakeScorer()
    d = Player(EngineConfig(), scorer).choose(board)  # type: ignore[arg-type]
    assert d.move == legal[0] and d.source == "forced" and scorer.score_calls == 0


def test_temperature_samples_among_legal_moves_reproducibly() -> None:
    board = chess.Board()
    prefs = {board.san(m): -1.0 for m in board.legal_moves}
    cfg = _cfg(search={"temperature": 1.0, "seed": 3})
    a = [Player(cfg, FakeScorer(prefs)).choose(board).move for _ in range(1)]  # type: ignore[arg-type]
    p = Player(cfg, FakeScorer(prefs))  # type: ignore[arg-type]
    seen = {p.choose(board).move for _ in range(40)}
    assert len(seen) > 5  # uniform preferences: sampling spreads
    assert all(m in board.legal_moves for m in seen)
    assert a[0] == Player(cfg, FakeScorer(prefs)).choose(board).move  # type: ignore[arg-type]


def test_generate_retries_then_plays_legal_move() -> None:
    scorer = FakeScorer(outputs=[" Zz9", " e5", " Nf3 Nc6"])
    p = Player(_cfg(search={"mode": "generate"}), scorer)  # type: ignore[arg-type]
    d = p.choose(chess.Board())
    assert d.move == chess.Move.from_uci("g1f3")
    assert d.raw_outputs == [" Zz9", " e5", " Nf3 Nc6"]
    assert p.stats.invalid_outputs == 2 and p.stats.fallbacks == 0
    assert any("try 3" in n for n in d.notes)


@pytest.mark.parametrize(
    ("fallback", "source"),
    [("constrained", "fallback-constrained"), ("random", "fallback-random"), ("resign", "fallback-resign")],
)
def test_generate_fallbacks_after_retries(fallback: str, source: str) -> None:
    scorer = FakeScorer(prefs={"d4": -0.1}, outputs=[" x"] * 10)
    p = Player(_cfg(search={"mode": "generate", "retries": 2, "fallback": fallback}), scorer)  # type: ignore[arg-type]
    board = chess.Board()
    d = p.choose(board)
    assert scorer.generate_calls == 3
    assert d.source == source
    assert p.stats.fallbacks == 1 and p.stats.invalid_outputs == 3
    if fallback == "resign":
        assert d.resign and d.move is None
    else:
        assert d.move in board.legal_moves
    if fallback == "constrained":
        assert d.move == chess.Move.from_uci("d2d4")


def test_fallback_is_logged_at_warning_with_fen_and_raw_output() -> None:
    from loguru import logger

    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        scorer = FakeScorer(outputs=[" garbage!"] * 2)
        Player(_cfg(search={"mode": "generate", "retries": 1, "fallback": "random"}), scorer).choose(  # type: ignore[arg-type]
            chess.Board()
        )
    finally:
        logger.remove(sink)
    assert any("fallback" in m and chess.STARTING_FEN in m and "garbage!" in m for m in messages)


def test_model_exception_gives_a_legal_fallback_move() -> None:
    board = chess.Board(EN_PASSANT)
    for mode in ("constrained", "generate"):
        p = Player(_cfg(search={"mode": mode}), FakeScorer(fail=True))  # type: ignore[arg-type]
        d = p.choose(board)
        assert d.move in board.legal_moves
        assert d.source == "error" and p.stats.errors == 1


def test_generate_counts_own_loss_result_as_resignation_attempt_and_resigns_on_streak() -> None:
    board = chess.Board()
    for san in ["e4", "e5", "Nf3", "Nc6", "Bc4", "Nf6", "Ng5", "d5", "exd5", "Nxd5", "Nxf7"]:
        board.push_san(san)
    # Black to move: "1-0" is Black writing White's win.
    cfg = _cfg(search={"mode": "generate", "retries": 0, "fallback": "random"}, resign={"mode": "streak", "streak": 2, "min_ply": 0})
    scorer = FakeScorer(outputs=[" 1-0"] * 5)
    p = Player(cfg, scorer)  # type: ignore[arg-type]
    first = p.choose(board)
    assert not first.resign and first.move in board.legal_moves and p.stats.resign_attempts == 1
    second = p.choose(board)
    assert second.resign and second.move is None
    assert p.stats.resign_attempts == 2


def test_threshold_resign_policy_uses_play_on_probability() -> None:
    board = chess.Board("4k3/8/8/8/8/8/qq6/4K3 w - - 0 60")  # White is lost
    legal_sans = [board.san(m) for m in board.legal_moves]
    prefs = {s: -8.0 for s in legal_sans}
    prefs["0-1"] = -0.01  # the model would rather write its own loss
    cfg = _cfg(resign={"mode": "threshold", "threshold": 0.1, "streak": 2, "min_ply": 0})
    p = Player(cfg, FakeScorer(prefs))  # type: ignore[arg-type]
    d1 = p.choose(board)
    assert not d1.resign and d1.play_on is not None and d1.play_on < 0.1
    d2 = p.choose(board)
    assert d2.resign and d2.source == "policy-resign"


def test_draw_offer_policy() -> None:
    board = chess.Board("4k3/8/8/8/8/8/8/4K2R w - - 0 60")
    board_early = chess.Board()
    legal = {board.san(m): -1.0 for m in board.legal_moves}
    never = Player(_cfg(draw={"accept": "never"}), FakeScorer(legal))  # type: ignore[arg-type]
    always = Player(_cfg(draw={"accept": "always"}), FakeScorer(legal))  # type: ignore[arg-type]
    assert not never.accept_draw(board) and always.accept_draw(board)
    # threshold: uniform preferences -> the chosen move's probability is low -> accept,
    # but never before min_ply.
    thr = Player(_cfg(draw={"accept": "threshold", "threshold": 0.5, "min_ply": 10}), FakeScorer(legal))  # type: ignore[arg-type]
    thr.choose(board)
    assert thr.accept_draw(board)
    assert not thr.accept_draw(board_early)
    confident = {san: -5.0 for san in legal}
    confident["Rh8+"] = -0.01  # the model is sure of its move: no draw
    thr2 = Player(_cfg(draw={"accept": "threshold", "threshold": 0.5, "min_ply": 10}), FakeScorer(confident))  # type: ignore[arg-type]
    thr2.choose(board)
    assert not thr2.accept_draw(board)


def test_no_model_plays_random_legal_fallbacks() -> None:
    board = chess.Board(CASTLING_BOTH)
    p = Player(EngineConfig(), None)
    d = p.choose(board)
    assert d.move in board.legal_moves and d.source == "fallback-random"
    assert any("no model loaded" in n for n in d.notes)


# -- the real scorer on the tiny Mistral model -------------------------------------------


@pytest.fixture(scope="module")
def tiny_scorer(tiny_model_dir) -> LMScorer:
    from engine.config import ModelConfig
    from engine.model import load_model

    loaded = load_model(ModelConfig(path=str(tiny_model_dir), device="cpu"))
    return LMScorer(loaded.model, loaded.tokenizer, loaded.device, score_batch=7)


def test_batched_cached_scores_equal_naive_full_sequence_scores(tiny_scorer: LMScorer) -> None:
    import torch

    board = chess.Board(CASTLING_BOTH)
    player = Player(EngineConfig(), tiny_scorer)
    prompt = player.prompt_for(board)
    conts = [prompt.completion(board.san(m)) for m in board.legal_moves] + [" 0-1"]
    fast = tiny_scorer.score(prompt, conts)
    tok = tiny_scorer.tokenizer
    p_ids = tok(prompt.text).input_ids
    for cont, got in zip(conts, fast.logprobs, strict=False):
        ids = tok(prompt.text + cont).input_ids
        assert ids[: len(p_ids)] == p_ids  # the move's tokens follow the prompt's tokens
        with torch.no_grad():
            logits = tiny_scorer.model(torch.tensor([ids])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        naive = sum(float(logp[i - 1, ids[i]]) for i in range(len(p_ids), len(ids)))
        assert got == pytest.approx(naive, abs=1e-4)


def test_tiny_model_plays_legal_moves_in_special_positions(tiny_scorer: LMScorer) -> None:
    for mode in ("constrained", "generate"):
        p = Player(_cfg(search={"mode": mode, "retries": 1}), tiny_scorer)
        for fen in (chess.STARTING_FEN, PROMOTION, EN_PASSANT, CASTLING_BOTH, CHECK_EVASION):
            board = chess.Board(fen)
            d = p.choose(board)
            assert d.move in board.legal_moves
            assert d.tokens > 0


def test_long_game_prompt_is_cut_to_the_token_budget(tiny_scorer: LMScorer) -> None:
    import random

    rng = random.Random(1)
    board = chess.Board()
    for _ in range(160):
        moves = list(board.legal_moves)
        if not moves:
            break
        board.push(rng.choice(moves))
    while not any(board.legal_moves):  # keep a position with a move to play
        board.pop()
    cfg = _cfg(prompt={"max_prompt_tokens": 200})
    p = Player(cfg, tiny_scorer)
    prompt = p.prompt_for(board)
    assert tiny_scorer.count_tokens(prompt) <= 200
    assert '[SetUp "1"]' in prompt.text  # restarted from a later position
    d = p.choose(board)
    assert d.move in board.legal_moves
