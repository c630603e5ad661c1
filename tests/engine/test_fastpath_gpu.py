"""The fast path on CUDA (run on the GPU machine: pytest -m gpu): CUDA graphs, bf16 and
NF4 + LoRA, against the plain scorer.

Tolerance: bf16 compute, so log-probabilities agree to 0.1 nats per candidate and the
chosen move is one the plain scorer rates within that of its best.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import chess
import pytest

from engine.config import EngineConfig, ModelConfig

pytestmark = pytest.mark.gpu
BF16_TOL = 0.1


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    lora = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    out = tmp_path_factory.mktemp("adapter")
    get_peft_model(base, lora).save_pretrained(str(out))
    return out


def _compare(scorer: object, plies: int = 24) -> None:
    from engine.player import Player

    player = Player(EngineConfig(), scorer)  # type: ignore[arg-type]
    rng = random.Random(4)
    board = chess.Board()
    for _ in range(plies):
        prompt = player.prompt_for(board, engine_color=chess.WHITE)
        conts = [prompt.completion(board.san(m)) for m in board.legal_moves]
        fast = scorer.score(prompt, conts).logprobs  # type: ignore[attr-defined]
        plain = scorer.score_plain(prompt, conts).logprobs  # type: ignore[attr-defined]
        assert max(abs(a - b) for a, b in zip(fast, plain, strict=True)) <= BF16_TOL
        best = max(range(len(fast)), key=fast.__getitem__)
        assert plain[best] >= max(plain) - BF16_TOL
        board.push(rng.choice(list(board.legal_moves)))


@pytest.mark.parametrize(("quant", "adapter"), [("none", False), ("nf4", True), ("none", True)])
@pytest.mark.parametrize(("fuse", "chunk_mb"), [(True, 0.0), (False, 0.0), (True, 0.002)])
def test_cuda_graph_fast_path_matches_plain(
    tiny_model_dir: Path, adapter_dir: Path, quant: str, adapter: bool, fuse: bool, chunk_mb: float
) -> None:
    from engine.model import load_model
    from engine.scoring import LMScorer

    loaded = load_model(ModelConfig(path=str(tiny_model_dir), adapter=str(adapter_dir) if adapter else "",
                                    device="cuda", quantization=quant, dtype="bfloat16"))  # type: ignore[arg-type]
    s = LMScorer(loaded.model, loaded.tokenizer, loaded.device, fuse_linears=fuse, nf4_chunk_mb=chunk_mb)
    assert s.fast and s.fast_path.use_graphs
    assert s.warmup(max_tokens=64) > 0
    _compare(s)
    fp = s.fast_path
    assert fp.graph_error is None, fp.graph_error
    assert fp.stats.graph_replays > 0
    assert fp.fuse_note.startswith("on" if fuse else "off"), fp.fuse_note
    assert ("chunks" in fp.fuse_note) == (chunk_mb > 0 and quant == "nf4")


def test_concurrent_games_on_cuda_match_one_at_a_time(tiny_model_dir: Path) -> None:
    from engine.model import load_model
    from engine.player import Player
    from engine.scoring import LMScorer

    loaded = load_model(ModelConfig(path=str(tiny_model_dir), device="cuda", dtype="bfloat16"))
    s = LMScorer(loaded.model, loaded.tokenizer, loaded.device, cache_slots=10, max_batch=8, gather_ms=20)
    got: dict[tuple[int, int], list[float]] = {}
    asked: dict[tuple[int, int], tuple[object, list[str]]] = {}
    barrier = threading.Barrier(8)

    def play(g: int) -> None:
        player = Player(EngineConfig(), s)
        rng = random.Random(g)
        board = chess.Board()
        for ply in range(6):
            barrier.wait(timeout=60)
            prompt = player.prompt_for(board, engine_color=chess.WHITE)
            conts = [prompt.completion(board.san(m)) for m in board.legal_moves]
            got[(g, ply)] = s.score(prompt, conts).logprobs
            asked[(g, ply)] = (prompt, conts)
            board.push(rng.choice(list(board.legal_moves)))

    threads = [threading.Thread(target=play, args=(g,)) for g in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(got) == 48 and s._batcher.largest > 1
    for key, (prompt, conts) in asked.items():
        plain = s.score_plain(prompt, conts).logprobs  # type: ignore[arg-type]
        assert max(abs(a - b) for a, b in zip(got[key], plain, strict=True)) <= BF16_TOL


def test_pipelined_games_on_cuda_match_one_at_a_time(tiny_model_dir: Path) -> None:
    """Eight games whose threads work between moves, over a pipelined scorer: batches
    are launched while another runs on the GPU, and every score still equals the plain
    scorer's."""
    import time

    from engine.model import load_model
    from engine.player import Player
    from engine.scoring import LMScorer

    loaded = load_model(ModelConfig(path=str(tiny_model_dir), device="cuda", dtype="bfloat16"))
    s = LMScorer(loaded.model, loaded.tokenizer, loaded.device, cache_slots=18, max_batch=8, gather_ms=2)
    assert s.pipelined
    s.warmup(max_tokens=256, max_games=8)
    got: dict[tuple[int, int], list[float]] = {}
    asked: dict[tuple[int, int], tuple[object, list[str]]] = {}

    def play(g: int) -> None:
        player = Player(EngineConfig(), s)
        rng = random.Random(g)
        board = chess.Board()
        for ply in range(10):
            prompt = player.prompt_for(board, engine_color=chess.WHITE)
            conts = [prompt.completion(board.san(m)) for m in board.legal_moves]
            got[(g, ply)] = s.score(prompt, conts).logprobs
            asked[(g, ply)] = (prompt, conts)
            board.push(rng.choice(list(board.legal_moves)))
            time.sleep(rng.uniform(0.001, 0.004))

    threads = [threading.Thread(target=play, args=(g,)) for g in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(got) == 80
    assert s._batcher.overlapped > 0  # some batches were launched beside a running one
    for key, (prompt, conts) in asked.items():
        plain = s.score_plain(prompt, conts).logprobs  # type: ignore[arg-type]
        assert max(abs(a - b) for a, b in zip(got[key], plain, strict=True)) <= BF16_TOL


def test_second_batch_launched_before_the_first_is_finished_on_cuda(tiny_model_dir: Path) -> None:
    """Two batches on the GPU at once (graph replays and result copies queued, not
    waited for), finished in reverse order: each game gets its own scores."""
    from engine.fastpath import Job
    from engine.model import load_model
    from engine.player import Player
    from engine.scoring import LMScorer
    from engine.tokentree import CandidateTree, shared_prefix_len

    loaded = load_model(ModelConfig(path=str(tiny_model_dir), device="cuda", dtype="bfloat16"))
    s = LMScorer(loaded.model, loaded.tokenizer, loaded.device, cache_slots=8)
    fp = s.fast_path
    player = Player(EngineConfig(), s)
    rng = random.Random(9)
    jobs, plain = [], []
    for i in range(6):
        board = chess.Board()
        for _ in range(3 + 4 * i):
            board.push(rng.choice(list(board.legal_moves)))
        prompt = player.prompt_for(board, engine_color=board.turn)
        conts = [prompt.completion(board.san(m)) for m in board.legal_moves]
        full = s.encoder.encode_candidates(prompt.text, conts, add_special_tokens=True)
        n = shared_prefix_len(full)
        jobs.append(Job(full[0][:n], CandidateTree.build([f[n:] for f in full])))
        plain.append(s.score_plain(prompt, conts).logprobs)
    fp.score_jobs(jobs[:3])  # capture the shape first
    fp.score_jobs(jobs[3:])
    first = fp.launch_jobs(jobs[:3])
    second = fp.launch_jobs(jobs[3:])
    assert first.step is not None and first.step.event is not None  # on the device, not waited for
    got = fp.finish(second) + fp.finish(first)
    for g, w in zip(got, plain[3:] + plain[:3], strict=True):
        assert isinstance(g, list)
        assert max(abs(a - b) for a, b in zip(g, w, strict=True)) <= BF16_TOL


def test_gpu_step_timing_counts_every_graph_step(tiny_model_dir: Path) -> None:
    """FastPath.time_gpu (the benchmarks' GPU-busy figure): each graph step's own GPU
    time is summed once it is finished, and the scores do not change."""
    from engine.model import load_model
    from engine.scoring import LMScorer

    loaded = load_model(ModelConfig(path=str(tiny_model_dir), device="cuda", dtype="bfloat16"))
    s = LMScorer(loaded.model, loaded.tokenizer, loaded.device)
    fp = s.fast_path
    fp.time_gpu = True
    _compare(s, plies=6)
    assert fp.stats.gpu_timed_steps == fp.stats.graph_replays > 0
    assert 0 < fp.stats.gpu_ms / fp.stats.gpu_timed_steps < 1000
