"""The fast path against the plain scorer: same moves, same log-probabilities.

Tolerance: on the CPU in float32 the fast path and the plain path agree to 1e-4
nats per candidate (measured: about 4e-6); the chosen move is the same.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import chess
import pytest

from engine.config import EngineConfig, ModelConfig
from engine.player import Player
from engine.prompt import Prompt
from engine.scoring import LMScorer
from engine.tokentree import CandidateTree, ContextEncoder

TOL = 1e-4

PROMOTION = "8/P6k/8/8/8/8/6K1/8 w - - 0 1"  # a8=Q/R/B/N: four candidates share "▁a", "8", "="
UNDERPROMOTION_CAPTURE = "1n5k/P7/8/8/8/8/6K1/8 w - - 0 1"  # axb8=Q+ and a8=Q: captures with promotion and check
EN_PASSANT = "rnbqkbnr/ppp1p1pp/8/3pPp2/8/8/PPPP1PPP/RNBQKBNR w KQkq f6 0 3"  # exf6 e.p. is legal
CASTLING_BOTH = "r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R w KQkq - 0 1"  # O-O and O-O-O
BLACK_CASTLES = "r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R b KQkq - 0 1"  # "1..." move text, Black to move
CHECK_EVASION = "4k3/8/8/8/8/8/3q4/4K3 w - - 0 1"  # king in check by a queen
SPECIAL = (chess.STARTING_FEN, PROMOTION, UNDERPROMOTION_CAPTURE, EN_PASSANT, CASTLING_BOTH, BLACK_CASTLES, CHECK_EVASION)


def _load(path: Path, **kwargs: object) -> LMScorer:
    from engine.model import load_model

    loaded = load_model(ModelConfig(path=str(path), device="cpu"))
    return LMScorer(loaded.model, loaded.tokenizer, loaded.device, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def scorer(tiny_model_dir: Path) -> LMScorer:
    s = _load(tiny_model_dir, cache_slots=4)
    assert s.fast, s.fast_reason
    return s


def random_game(seed: int, plies: int) -> chess.Board:
    rng = random.Random(seed)
    board = chess.Board()
    for _ in range(plies):
        moves = list(board.legal_moves)
        if not moves:
            board.pop()
            continue
        board.push(rng.choice(moves))
    while not any(board.legal_moves):
        board.pop()
    return board


def candidates(player: Player, board: chess.Board, color: chess.Color = chess.WHITE) -> tuple[Prompt, list[str]]:
    prompt = player.prompt_for(board, engine_color=color)
    conts = [prompt.completion(board.san(m)) for m in board.legal_moves]
    conts.append(prompt.completion("1-0" if color == chess.BLACK else "0-1"))  # the resignation candidate
    return prompt, conts


def assert_same(fast: list[float], plain: list[float]) -> None:
    assert len(fast) == len(plain)
    worst = max(abs(a - b) for a, b in zip(fast, plain, strict=True))
    assert worst <= TOL, f"fast and plain log-probabilities differ by {worst}"
    best_fast = max(range(len(fast)), key=fast.__getitem__)
    best_plain = max(range(len(plain)), key=plain.__getitem__)
    assert best_fast == best_plain or abs(plain[best_fast] - plain[best_plain]) <= TOL


# -- tokenization in context ----------------------------------------------------------------


@pytest.mark.parametrize("template", ["pgn-base", "pgn-instruct"])
def test_tail_tokenization_equals_whole_text_tokenization(scorer: LMScorer, template: str) -> None:
    cfg = EngineConfig()
    cfg.prompt.template = template
    player = Player(cfg, scorer)
    enc = ContextEncoder(scorer.tokenizer)
    boards = [chess.Board(f) for f in SPECIAL] + [random_game(s, p) for s, p in ((1, 9), (2, 40), (3, 120))]
    cut = EngineConfig()
    cut.prompt.template = template
    cut.prompt.max_prompt_tokens = 120  # prompts restarted from a FEN
    boards_cut = [random_game(4, 80)]
    for p, group in ((player, boards), (Player(cut, scorer), boards_cut)):
        for board in group:
            prompt, conts = candidates(p, board, board.turn)
            got = enc.encode_candidates(prompt.text, conts, add_special_tokens=prompt.add_special_tokens)
            want = [
                scorer.tokenizer(prompt.text + c, add_special_tokens=prompt.add_special_tokens).input_ids for c in conts
            ]
            assert got == want, board.fen()
    assert enc.whole_fallbacks == 0  # the tail shortcut held everywhere


def test_encoder_calls_the_rust_tokenizer_only_when_it_agrees(scorer: LMScorer) -> None:
    enc = ContextEncoder(scorer.tokenizer)
    assert scorer.tokenizer.is_fast and enc._backend is not None  # the tests above ran through it

    class Skewed:  # a backend that drops the last id: must not be used
        def __init__(self, inner: object) -> None:
            self.inner = inner

        def encode_batch_fast(self, texts: list[str], add_special_tokens: bool) -> list[object]:
            out = self.inner.encode_batch_fast(texts, add_special_tokens=add_special_tokens)  # type: ignore[attr-defined]
            return [type("E", (), {"ids": e.ids[:-1]})() for e in out]

    class Wrapped:
        is_fast = True

        def __init__(self, tok: object) -> None:
            self.tok = tok
            self.backend_tokenizer = Skewed(tok.backend_tokenizer)  # type: ignore[attr-defined]

        def __call__(self, *a: object, **k: object) -> object:
            return self.tok(*a, **k)  # type: ignore[operator]

    skewed = ContextEncoder(Wrapped(scorer.tokenizer))
    assert skewed._backend is None
    text = '[Event "?"]\n\n1. e4 e5 2.'
    assert skewed.encode_candidates(text, [" Nf3", " d4"], add_special_tokens=True) == [
        scorer.tokenizer(text + c).input_ids for c in (" Nf3", " d4")
    ]


def test_growing_prompts_are_tokenized_as_whole_texts(scorer: LMScorer) -> None:
    player = Player(EngineConfig(), scorer)
    enc = ContextEncoder(scorer.tokenizer)
    rng = random.Random(8)
    board = chess.Board()
    for _ in range(60):
        for color in (chess.WHITE, chess.BLACK):  # two games' prompts interleaved, as two players
            text = player.prompt_for(board, engine_color=color).text
            assert enc.encode(text, add_special_tokens=True) == scorer.tokenizer(text).input_ids
        board.push(rng.choice(list(board.legal_moves)))
    assert enc.grown > 50  # most prompts were an earlier one plus a tail


def test_tail_tokenization_falls_back_when_the_cut_is_not_a_token_boundary(scorer: LMScorer) -> None:
    enc = ContextEncoder(scorer.tokenizer, tail_chars=3)
    text = "1. e4 e5 2.  Nf3"  # two spaces: "▁▁" is one token, so a cut there does not check out
    conts = [" Nc6", " d6"]
    got = enc.encode_candidates(text, conts, add_special_tokens=True)
    assert got == [scorer.tokenizer(text + c).input_ids for c in conts]


def test_candidate_tree_feeds_shared_tokens_once() -> None:
    # " Nf3" " Nc3" " e4": tokens [N, f, 3] [N, c, 3] [e, 4]
    tree = CandidateTree.build([[10, 11, 3], [10, 12, 3], [20, 4]])
    assert tree.node_tokens == [10, 11, 12, 20]  # N once; the last tokens are never fed
    assert tree.node_parent == [-1, 0, 0, -1]
    assert tree.node_depth == [1, 2, 2, 1]
    # edges: root->N, N->f, f->3, N->c, c->3, root->e, e->4
    assert len(tree.edge_src) == 7
    logps = [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0]
    assert tree.candidate_logprobs(logps) == [-6.0, -10.0, -13.0]


# -- fast == plain ------------------------------------------------------------------------------


def test_fast_path_equals_plain_path_in_special_positions(scorer: LMScorer) -> None:
    player = Player(EngineConfig(), scorer)
    for fen in SPECIAL:
        board = chess.Board(fen)
        prompt, conts = candidates(player, board, board.turn)
        fast = scorer.score(prompt, conts)
        plain = scorer.score_plain(prompt, conts)
        assert_same(fast.logprobs, plain.logprobs)
        assert fast.n_tokens == plain.n_tokens and fast.tokens_evaluated == plain.tokens_evaluated


def test_fast_path_chooses_the_plain_move_over_a_long_game(tiny_model_dir: Path) -> None:
    fast_scorer = _load(tiny_model_dir, cache_slots=2)
    plain_scorer = _load(tiny_model_dir, fast=False)
    assert fast_scorer.fast and not plain_scorer.fast
    fast_player = Player(EngineConfig(), fast_scorer)
    plain_player = Player(EngineConfig(), plain_scorer)
    rng = random.Random(7)
    board = chess.Board()
    for ply in range(90):
        if ply % 3 == 0:  # the engine's own choice, both ways
            color = board.turn
            a = fast_player.choose(board, engine_color=color)
            b = plain_player.choose(board, engine_color=color)
            assert a.move == b.move, f"ply {ply}: fast {a.move} plain {b.move} at {board.fen()}"
            assert a.probability == pytest.approx(b.probability, abs=1e-4)
        moves = list(board.legal_moves)
        board.push(rng.choice(moves))
        if board.is_game_over():
            break
    assert fast_scorer.fast_path.stats.prefix_tokens_reused > 0


@pytest.mark.parametrize("fuse", [True, False])
def test_lora_adapter_fast_equals_plain(tiny_model_dir: Path, tmp_path: Path, fuse: bool) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    lora = LoraConfig(
        r=4, lora_alpha=8, init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    get_peft_model(base, lora).save_pretrained(str(tmp_path / "adapter"))
    from engine.model import load_model

    loaded = load_model(ModelConfig(path=str(tiny_model_dir), adapter=str(tmp_path / "adapter"), device="cpu"))
    s = LMScorer(loaded.model, loaded.tokenizer, "cpu", fuse_linears=fuse)
    assert s.fast
    assert s.fast_path.fuse_note.startswith("on" if fuse else "off")
    player = Player(EngineConfig(), s)
    for board in (chess.Board(PROMOTION), random_game(5, 30)):
        prompt, conts = candidates(player, board, board.turn)
        assert_same(s.score(prompt, conts).logprobs, s.score_plain(prompt, conts).logprobs)


def test_grouped_projections_share_the_modules_weights(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    ids = torch.tensor([[1, 733, 28705, 28740, 28723]])
    with torch.no_grad():
        before = model(ids).logits
    s = LMScorer(model, _load(tiny_model_dir).tokenizer, "cpu")
    assert s.fast_path.fuse_note.startswith("on")
    attn = model.model.layers[0].self_attn
    q, k, v = attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight
    # q, k and v now sit side by side in one tensor: grouped, not copied.
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()
    assert k.storage_offset() == q.storage_offset() + q.numel()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)  # the model itself computes what it did
    LMScorer(model, s.tokenizer, "cpu")  # grouping again finds them adjacent and copies nothing
    assert attn.q_proj.weight.untyped_storage().data_ptr() == q.untyped_storage().data_ptr()


def test_llama_models_take_the_fast_path_and_others_the_plain_one(mistral_tokenizer_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(mistral_tokenizer_dir))
    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=32000, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=2048)
    ).eval()
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=32000, n_embd=32, n_layer=1, n_head=2)).eval()
    board = chess.Board(CASTLING_BOTH)
    player = Player(EngineConfig(), None)
    prompt = player.builder.from_board(board)
    conts = [prompt.completion(board.san(m)) for m in board.legal_moves]
    s = LMScorer(llama, tok, "cpu")
    assert s.fast
    assert_same(s.score(prompt, conts).logprobs, s.score_plain(prompt, conts).logprobs)
    g = LMScorer(gpt2, tok, "cpu")
    assert not g.fast and "gpt2" in g.fast_reason
    assert len(g.score(prompt, conts).logprobs) == len(conts)
    with pytest.raises(Exception, match="gpt2"):
        LMScorer(gpt2, tok, "cpu", fast=True)


def test_cuda_graph_layout_matches_plain_on_the_cpu(tiny_model_dir: Path) -> None:
    """The padded static buffers a CUDA graph replays (scratch writes, padding rows,
    bucketed key length) run eagerly here: same scores as the plain scorer."""
    from engine.fastpath import Job
    from engine.tokentree import shared_prefix_len

    s = _load(tiny_model_dir, cache_slots=5, cuda_graphs=True)
    fp = s.fast_path
    assert fp.use_graphs and fp._emulate_graphs
    assert s.warmup(max_tokens=48) > 0
    player = Player(EngineConfig(), s)
    rng = random.Random(9)
    board = chess.Board()
    for _ in range(24):
        prompt, conts = candidates(player, board, board.turn)
        assert_same(s.score(prompt, conts).logprobs, s.score_plain(prompt, conts).logprobs)
        board.push(rng.choice(list(board.legal_moves)))
    # Several games in one padded step.
    jobs, singles = [], []
    for b in [random_game(60 + i, 5 + 7 * i) for i in range(4)]:
        prompt, conts = candidates(player, b, b.turn)
        full = s.encoder.encode_candidates(prompt.text, conts, add_special_tokens=True)
        n = shared_prefix_len(full)
        jobs.append(Job(full[0][:n], CandidateTree.build([f[n:] for f in full])))
        singles.append(s.score_plain(prompt, conts).logprobs)
    for got, want in zip(fp.score_jobs(jobs), singles, strict=True):
        assert isinstance(got, list)
        assert_same(got, want)
    assert fp.stats.eager_steps == 0 and fp.stats.graph_replays == fp.stats.steps


# -- the cache between moves ---------------------------------------------------------------------


def test_reused_cache_gives_the_fresh_prompt_result(tiny_model_dir: Path) -> None:
    kept = _load(tiny_model_dir, cache_slots=2)
    fresh = _load(tiny_model_dir, cache_slots=2)
    player = Player(EngineConfig(), kept)
    rng = random.Random(3)
    board = chess.Board()
    for _ in range(40):
        prompt, conts = candidates(player, board)
        a = kept.score(prompt, conts).logprobs
        fresh.reset_cache()
        b = fresh.score(prompt, conts).logprobs
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-5
        board.push(rng.choice(list(board.legal_moves)))
    stats = kept.fast_path.stats
    # Between moves only the new tokens went through the model.
    assert stats.prefix_tokens_reused > 10 * stats.prefix_tokens_fed
    assert fresh.fast_path.stats.prefix_tokens_reused == 0


def test_takeback_jump_new_game_and_fen_restart_never_reuse_a_wrong_cache(tiny_model_dir: Path) -> None:
    s = _load(tiny_model_dir, cache_slots=1)  # one slot: every change must cut it back
    player = Player(EngineConfig(), s)
    board = random_game(11, 30)
    sequence: list[tuple[str, Player, chess.Board, chess.Color]] = [("game", player, board.copy(), chess.WHITE)]
    b2 = board.copy()
    b2.pop()
    b2.pop()
    sequence.append(("takeback 2 plies", player, b2, chess.WHITE))
    b3 = b2.copy()
    b3.push(list(b3.legal_moves)[-1])  # a different move than the one taken back
    b3.push(list(b3.legal_moves)[0])
    sequence.append(("other line", player, b3, chess.WHITE))
    sequence.append(("jump to a set-up position", player, chess.Board(EN_PASSANT), chess.WHITE))
    sequence.append(("new game, other colour", player, chess.Board(), chess.BLACK))
    cut = EngineConfig()
    cut.prompt.max_prompt_tokens = 150
    long_game = random_game(12, 70)
    sequence.append(("prompt cut to the budget (FEN restart)", Player(cut, s), long_game, chess.WHITE))
    sequence.append(("back to the first game", player, board.copy(), chess.WHITE))
    for what, p, b, color in sequence:
        prompt, conts = candidates(p, b, color)
        before = s.fast_path.stats.prefix_tokens_reused
        fast = s.score(prompt, conts).logprobs
        reused = s.fast_path.stats.prefix_tokens_reused - before
        full = s.encode(prompt.text, add_special_tokens=True)
        assert reused < len(full), what
        assert_same(fast, s.score_plain(prompt, conts).logprobs)


def test_a_takeback_keeps_the_old_line_in_another_slot(tiny_model_dir: Path) -> None:
    s = _load(tiny_model_dir, cache_slots=3)
    player = Player(EngineConfig(), s)
    board = random_game(21, 24)
    prompt, conts = candidates(player, board)
    s.score(prompt, conts)
    back = board.copy()
    back.pop()
    back.pop()
    p2, c2 = candidates(player, back)
    s.score(p2, c2)
    held = [len(ids) for ids in s.fast_path.slots.ids if len(ids)]
    assert len(held) == 2  # the takeback got its own slot (its shared part copied over)
    before = s.fast_path.stats.prefix_tokens_fed
    s.score(prompt, conts)  # forward again: the old line is still cached
    assert s.fast_path.stats.prefix_tokens_fed - before == 1  # only the last prefix token, for its output


def test_stale_cache_entries_past_the_prefix_are_never_read(tiny_model_dir: Path) -> None:
    import torch

    s = _load(tiny_model_dir, cache_slots=1)
    player = Player(EngineConfig(), s)
    board = random_game(31, 16)
    prompt, conts = candidates(player, board)
    want = s.score(prompt, conts).logprobs
    committed = len(s.fast_path.slots.ids[0])
    with torch.inference_mode():
        for k in s.fast_path.store.k + s.fast_path.store.v:
            k[:, committed:] = 1e4  # the candidates' scratch entries and everything after: garbage
    assert_same(s.score(prompt, conts).logprobs, want)


# -- many games at once ---------------------------------------------------------------------------


def test_games_in_one_forward_score_as_one_at_a_time(tiny_model_dir: Path) -> None:
    from engine.fastpath import Job
    from engine.tokentree import shared_prefix_len

    s = _load(tiny_model_dir, cache_slots=6)
    boards = [random_game(40 + i, 6 + 9 * i) for i in range(5)] + [chess.Board(PROMOTION)]
    player = Player(EngineConfig(), s)
    jobs, singles = [], []
    for b in boards:
        prompt, conts = candidates(player, b, b.turn)
        full = s.encoder.encode_candidates(prompt.text, conts, add_special_tokens=True)
        n = shared_prefix_len(full)
        jobs.append(Job(full[0][:n], CandidateTree.build([f[n:] for f in full])))
        singles.append(s.score_plain(prompt, conts).logprobs)
    batched = s.fast_path.score_jobs(jobs)
    assert s.fast_path.stats.steps == 1  # all six games went through one forward
    for got, want in zip(batched, singles, strict=True):
        assert isinstance(got, list)
        assert_same(got, want)


def _run_games(n_games: int, play: Callable[[int, threading.Barrier], None]) -> None:
    """``play(g, barrier)`` for each game in its own thread; the first error fails the test
    (and breaks the barrier so that the other games stop waiting)."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_games)

    def run(g: int) -> None:
        try:
            play(g, barrier)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(g,)) for g in range(n_games)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


def test_concurrent_games_from_threads_are_batched_and_exact(tiny_model_dir: Path) -> None:
    s = _load(tiny_model_dir, cache_slots=8, max_batch=8, gather_ms=20.0)
    n_games, plies = 6, 8
    results: dict[tuple[int, int], list[float]] = {}
    positions: dict[tuple[int, int], tuple[Prompt, list[str]]] = {}

    def play(g: int, barrier: threading.Barrier) -> None:
        player = Player(EngineConfig(), s)
        rng = random.Random(100 + g)
        board = chess.Board()
        for _ in range(g):  # each game its own opening
            board.push(rng.choice(list(board.legal_moves)))
        for ply in range(plies):
            barrier.wait(timeout=30)
            prompt, conts = candidates(player, board)
            results[(g, ply)] = s.score(prompt, conts).logprobs
            positions[(g, ply)] = (prompt, conts)
            board.push(rng.choice(list(board.legal_moves)))

    _run_games(n_games, play)
    assert s._batcher.largest > 1  # concurrent calls did share forwards
    assert s._batcher.batches < n_games * plies
    for key, (prompt, conts) in positions.items():
        assert_same(results[key], s.score_plain(prompt, conts).logprobs)


def test_cancelled_request_raises_cancelled(scorer: LMScorer) -> None:
    from engine.scoring import Cancelled

    player = Player(EngineConfig(), scorer)
    prompt, conts = candidates(player, chess.Board())
    ev = threading.Event()
    ev.set()
    with pytest.raises(Cancelled):
        scorer.score(prompt, conts, ev)


def test_batcher_passes_each_caller_its_own_result_or_error() -> None:
    from engine.batcher import Batcher

    seen: list[int] = []

    def run(items: list[int]) -> list[int | BaseException]:
        seen.append(len(items))
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]

    b: Batcher[int, int] = Batcher(run, max_items=4, gather_s=0.05)
    out: dict[int, object] = {}
    start = threading.Barrier(6)

    def call(i: int) -> None:
        start.wait()
        try:
            out[i] = b.submit(i)
        except ValueError as exc:
            out[i] = str(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in (1, 2, 3, -4, 5, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert out == {1: 10, 2: 20, 3: 30, -4: "bad -4", 5: 50, 6: 60}
    assert max(seen) <= 4 and sum(seen) == 6


def test_batcher_gather_items_waits_for_every_game() -> None:
    """With gather_items = the number of games, stragglers a few ms late still ride in
    the leader's batch (without it the first caller goes alone)."""
    from engine.batcher import Batcher

    def batches(gather_items: int) -> list[int]:
        seen: list[int] = []

        def run(items: list[int]) -> list[int]:
            seen.append(len(items))
            return items

        b: Batcher[int, int] = Batcher(run, max_items=8, gather_s=2.0, gather_items=gather_items)

        def call(i: int) -> None:
            time.sleep(0.02 * i)  # arrivals 20 ms apart
            assert b.submit(i) == i

        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        return seen

    assert batches(4) == [4]
    assert batches(0)[0] == 1
    with pytest.raises(ValueError, match="gather_items"):
        Batcher(lambda items: items, max_items=2, gather_items=-1)


class _FakeDevice:
    """A device for the pipelined batcher: a launched batch is done ``seconds`` later."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.running = 0
        self.most_running = 0
        self.launches = 0

    def launch(self, items: list[int]) -> tuple[list[int], float]:
        if 999 in items:
            raise RuntimeError("launch failed")
        with self.lock:
            self.running += 1
            self.launches += 1
            self.most_running = max(self.most_running, self.running)
        return items, time.monotonic() + self.seconds

    def ready(self, handle: tuple[list[int], float]) -> bool:
        return time.monotonic() >= handle[1]

    def finish(self, handle: tuple[list[int], float]) -> list[int | BaseException]:
        items, done = handle
        time.sleep(max(0.0, done - time.monotonic()))
        with self.lock:
            self.running -= 1
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


def test_pipelined_batcher_launches_the_next_batch_while_one_runs() -> None:
    """Eight games' threads, each asking for a move after the last one's answer and
    working 5-15 ms between moves (a batch takes 30 ms): every caller gets its own
    result or error, never more than two batches run at once, and batches are
    launched while another one runs."""
    from engine.batcher import Batcher

    dev = _FakeDevice(0.03)
    b: Batcher[int, int] = Batcher(
        lambda items: [], max_items=8, gather_s=0.002, launch=dev.launch, finish=dev.finish, ready=dev.ready
    )
    out: dict[int, object] = {}

    def game(g: int) -> None:
        rng = random.Random(g)
        for ply in range(12):
            item = -(g * 100 + ply) if (g, ply) == (3, 5) else g * 100 + ply
            try:
                out[item] = b.submit(item)
            except ValueError as exc:
                out[item] = str(exc)
            time.sleep(rng.uniform(0.005, 0.015))  # the game's own work between moves

    threads = [threading.Thread(target=game, args=(g,)) for g in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    want = {g * 100 + p: g * 1000 + p * 10 for g in range(1, 9) for p in range(12)}
    del want[305]
    want[-305] = "bad -305"
    assert out == want
    assert dev.running == 0 and dev.most_running == 2
    assert b.overlapped > 0 and b.items == 96 and b.batches == dev.launches
    assert b.batches < 96  # games shared batches


def test_pipelined_batcher_reports_a_failed_launch_to_its_batch_only() -> None:
    from engine.batcher import Batcher

    dev = _FakeDevice(0.01)
    b: Batcher[int, int] = Batcher(lambda items: [], max_items=4, launch=dev.launch, finish=dev.finish, ready=dev.ready)
    with pytest.raises(RuntimeError, match="launch failed"):
        b.submit(999)
    assert b.submit(7) == 70  # the batcher goes on
    with pytest.raises(ValueError, match="go together"):
        Batcher(lambda items: [], max_items=1, launch=dev.launch)


def test_fast_path_launches_a_batch_while_another_is_unfinished(tiny_model_dir: Path) -> None:
    """A second batch launched before the first is finished gets other cache slots;
    finishing them in either order gives each game its own scores, and with every
    slot serving an unfinished step a third batch is refused, not mixed in."""
    from engine.fastpath import Job
    from engine.tokentree import shared_prefix_len

    s = _load(tiny_model_dir, cache_slots=6)
    fp = s.fast_path
    player = Player(EngineConfig(), s)
    jobs, want = [], []
    for i in range(7):
        b = random_game(60 + i, 4 + 5 * i)
        prompt, conts = candidates(player, b, b.turn)
        full = s.encoder.encode_candidates(prompt.text, conts, add_special_tokens=True)
        n = shared_prefix_len(full)
        jobs.append(Job(full[0][:n], CandidateTree.build([f[n:] for f in full])))
        want.append(s.score_plain(prompt, conts).logprobs)
    first = fp.launch_jobs(jobs[:3])
    second = fp.launch_jobs(jobs[3:6])
    assert first.step is not None and second.step is not None
    slots_1 = {r.plan.slot for r in first.step.rows}
    slots_2 = {r.plan.slot for r in second.step.rows}
    assert len(slots_1) == len(slots_2) == 3 and not slots_1 & slots_2
    third = fp.launch_jobs(jobs[6:])
    assert isinstance(third.results[0], RuntimeError) and "no free cache slot" in str(third.results[0])
    got = fp.finish(second) + fp.finish(first)
    assert not fp._inflight_slots
    for g, w in zip(got, want[3:6] + want[:3], strict=True):
        assert isinstance(g, list)
        assert_same(g, w)
    got = fp.score_jobs(jobs[6:])  # slots are free again
    assert isinstance(got[0], list)
    assert_same(got[0], want[6])


def test_scorer_pipelines_only_when_the_cache_holds_two_batches(tiny_model_dir: Path) -> None:
    assert _load(tiny_model_dir, cache_slots=10, max_batch=4).pipelined
    assert not _load(tiny_model_dir, cache_slots=4, max_batch=4).pipelined
    assert not _load(tiny_model_dir, cache_slots=10, max_batch=4, pipeline=False).pipelined
    assert not _load(tiny_model_dir, cache_slots=10, max_batch=4, fast=False).pipelined


def test_fast_path_failure_falls_back_to_the_plain_path(tiny_model_dir: Path) -> None:
    s = _load(tiny_model_dir)
    player = Player(EngineConfig(), s)
    prompt, conts = candidates(player, chess.Board(CASTLING_BOTH))
    want = s.score_plain(prompt, conts).logprobs

    def broken(jobs: object) -> object:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    s.fast_path.score_jobs = broken  # type: ignore[method-assign]
    for _ in range(3):
        assert_same(s.score(prompt, conts).logprobs, want)
    assert not s.fast and "illegal memory access" in s.fast_reason  # switched off after three failures


def _play_scored(s: LMScorer, g: int, plies: int, barrier: threading.Barrier | None) -> list[tuple[str, list[float]]]:
    """Game ``g`` by the model's best move: its moves (UCI) and each position's scores."""
    player = Player(EngineConfig(), s)
    rng = random.Random(200 + g)
    board = chess.Board()
    for _ in range(g % 3):  # the games leave the opening apart
        board.push(rng.choice(list(board.legal_moves)))
    played: list[tuple[str, list[float]]] = []
    for _ in range(plies):
        if barrier is not None:
            barrier.wait(timeout=60)
        prompt, conts = candidates(player, board, board.turn)
        logps = s.score(prompt, conts).logprobs
        moves = list(board.legal_moves)
        best = max(range(len(moves)), key=logps.__getitem__)
        played.append((moves[best].uci(), logps))
        board.push(moves[best])
        if not any(board.legal_moves):
            break
    return played


def test_concurrent_games_after_warmup_capture_nothing_and_play_as_alone(tiny_model_dir: Path) -> None:
    """Games batched through one scorer with the CUDA-graph layout (run eagerly on the
    CPU) play the moves they play alone, with the same scores; warmup(max_games=N)
    has captured every step shape they need, so none is captured during play."""
    n_games, plies = 4, 10
    # The leader waits (up to 2 s) until all four games are queued: batching must not
    # depend on how fast the threads happen to run on a loaded machine.
    s = _load(tiny_model_dir, cache_slots=2 * n_games + 2, max_batch=n_games, gather_ms=2000.0, cuda_graphs=True)
    s._batcher._last_batch = n_games
    fp = s.fast_path
    assert fp._emulate_graphs
    assert s.warmup(max_tokens=256, max_games=n_games) == len(fp.warmup_keys(max_tokens=256, max_games=n_games))
    assert any(k[3] == 4 for k in fp.warmup_keys(max_games=n_games))  # batched shapes are in the warmup
    captured = fp.stats.graphs_captured
    together: dict[int, list[tuple[str, list[float]]]] = {}

    def play(g: int, barrier: threading.Barrier) -> None:
        together[g] = _play_scored(s, g, plies, barrier)

    _run_games(n_games, play)
    assert s._batcher.largest == n_games  # steps of four games (the four-row shape) ran
    assert fp.stats.graphs_captured == captured, "a step shape was captured during play"
    assert fp.stats.eager_steps == 0
    alone = _load(tiny_model_dir, cache_slots=2)
    for g in range(n_games):
        solo = _play_scored(alone, g, plies, None)
        assert [m for m, _ in together[g]] == [m for m, _ in solo], f"game {g} played other moves batched"
        for (_, got), (_, want) in zip(together[g], solo, strict=True):
            assert_same(got, want)


def test_batched_step_shapes_are_few() -> None:
    """Steps of several games fall into coarse shapes: 16 games' steps of any size up
    to 2048 tokens, at one key length, need at most a few dozen graphs."""
    from engine.fastpath import multi_bucket

    assert [multi_bucket(n) for n in (1, 128, 129, 193, 700, 1025, 2048)] == [128, 128, 192, 256, 768, 1280, 2048]
    assert len({multi_bucket(n) for n in range(1, 2049)}) == 15


def test_the_bots_loader_sizes_the_scorer_for_its_games(tiny_model_dir: Path) -> None:
    """The bot's games share one scorer: with 8 games it keeps at least 18 cache slots
    and pipelines batches of up to 8; one engine keeps the configured slots."""
    from engine.uci import load_scorer

    cfg = EngineConfig()
    cfg.model.path = str(tiny_model_dir)
    shared = load_scorer(cfg, games=8)
    assert shared.fast_path.slots.n_slots == 18 and shared._batcher.max_items == 8 and shared.pipelined
    alone = load_scorer(cfg)
    assert alone.fast_path.slots.n_slots == cfg.search.cache_slots and not alone.pipelined


def test_split_on_the_tails_equals_the_split_of_whole_sequences() -> None:
    """The scorer splits prefix and suffixes on the candidates' tails alone (the prompt's
    head is not copied per candidate): the same split as shared_prefix_len on the whole
    sequences, including an empty head, one candidate and candidates that share all but
    their last token."""
    from engine.tokentree import shared_prefix_len, split_candidates

    rng = random.Random(4)
    cases = [([], [[5, 6], [5, 7]]), ([1, 2], [[3]]), ([1], [[2, 3], [2, 3, 4]]), ([], [[9]]), ([], [[9], [9, 1]])]
    for _ in range(300):
        head = [rng.randrange(5) for _ in range(rng.randrange(0, 6))]
        stem = [rng.randrange(5) for _ in range(rng.randrange(0, 4))]
        tails = [stem + [rng.randrange(5) for _ in range(rng.randrange(0 if stem or head else 1, 4))]
                 for _ in range(rng.randrange(1, 6))]
        if all(head + t for t in tails):
            cases.append((head, tails))
    for head, tails in cases:
        full = [head + t for t in tails]
        n = shared_prefix_len(full)
        prefix, suffixes = split_candidates(head, tails)
        assert prefix == full[0][:n] and suffixes == [f[n:] for f in full], (head, tails)


def test_searchmoves_on_the_fast_path_score_the_subset_as_the_full_choice_does(tiny_model_dir: Path) -> None:
    """`go searchmoves`: the fast path scores just those candidates (a smaller tree over the kept
    cache), and their probabilities renormalize the full choice's over the subset."""
    s = _load(tiny_model_dir, cache_slots=2)
    player = Player(EngineConfig(), s)
    board = chess.Board()
    for uci in ("e2e4", "e7e5", "g1f3", "b8c6"):
        board.push_uci(uci)
    full = player.choose(board, engine_color=chess.WHITE)
    probs = dict(full.ranked)
    assert len(probs) == board.legal_moves.count() and full.move == full.ranked[0][0]
    only = [m for m, _ in full.ranked[-3:]]  # the three least likely moves
    part = player.choose(board, engine_color=chess.WHITE, only=only)
    assert part.move in only and [m for m, _ in part.ranked] == only
    total = sum(probs[m] for m in only)
    for m, p in part.ranked:
        assert p == pytest.approx(probs[m] / total, rel=1e-3)
