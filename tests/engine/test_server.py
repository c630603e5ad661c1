"""The model server (engine.server): engine processes' moves scored by one model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import chess
import pytest

from engine.config import EngineConfig
from engine.player import Player
from engine.prompt import Prompt
from engine.scoring import LMScorer
from engine.server import RemoteScorer, ScorerServer, ServerError

OPENING = ["e2e4", "e7e5", "g1f3", "b8c6", "f1b5", "a7a6"]


@pytest.fixture(scope="module")
def tiny_scorer(tiny_model_dir: Path) -> LMScorer:
    from engine.config import ModelConfig
    from engine.model import load_model

    loaded = load_model(ModelConfig(path=str(tiny_model_dir), device="cpu"))
    return LMScorer(loaded.model, loaded.tokenizer, loaded.device, cache_slots=10, max_batch=4)


@pytest.fixture()
def sock(tmp_path: Path) -> str:
    # Unix socket paths are limited to ~107 bytes: pytest's tmp_path can be longer
    path = f"/tmp/mc-test-{os.getpid()}-{time.monotonic_ns()}.sock"
    yield path
    if os.path.exists(path):
        os.unlink(path)


def board_after(moves: list[str]) -> chess.Board:
    board = chess.Board()
    for m in moves:
        board.push_uci(m)
    return board


def run_threads(n: int, play: Any) -> list[BaseException]:
    """``play(i)`` for i in range(n), each in its own thread; the exceptions they raised."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            play(i)
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_remote_scores_equal_local_scores(tiny_scorer: LMScorer, sock: str) -> None:
    with ScorerServer(tiny_scorer, sock).start():
        remote = RemoteScorer(sock)
        player_local = Player(EngineConfig(), tiny_scorer)
        board = board_after(OPENING)
        prompt = player_local.prompt_for(board, engine_color=chess.WHITE)
        conts = [prompt.completion(board.san(m)) for m in board.legal_moves]
        local = tiny_scorer.score(prompt, conts)
        got = remote.score(prompt, conts)
        assert got.n_tokens == local.n_tokens
        assert got.tokens_evaluated == local.tokens_evaluated
        assert got.logprobs == pytest.approx(local.logprobs, abs=1e-4)
        # the same prompt with every candidate tokenized whole: the plain reference
        plain = tiny_scorer.score_plain(prompt, conts)
        assert got.logprobs == pytest.approx(plain.logprobs, abs=1e-3)
        remote.close()


def test_remote_player_plays_the_local_players_moves(tiny_scorer: LMScorer, sock: str) -> None:
    with ScorerServer(tiny_scorer, sock).start() as server:
        remote = RemoteScorer(sock)
        assert remote.model.config.max_position_embeddings == tiny_scorer.model.config.max_position_embeddings
        a, b = Player(EngineConfig(), tiny_scorer), Player(EngineConfig(), remote)
        board = chess.Board()
        for _ in range(12):
            da = a.choose(board, engine_color=board.turn)
            db = b.choose(board, engine_color=board.turn)
            assert db.source == "model"
            assert db.move == da.move
            board.push(da.move)
        assert server.requests >= 12
        remote.close()


def test_generate_goes_through_the_server(tiny_scorer: LMScorer, sock: str) -> None:
    with ScorerServer(tiny_scorer, sock).start():
        remote = RemoteScorer(sock)
        prompt = Player(EngineConfig(), tiny_scorer).prompt_for(board_after(OPENING))
        kwargs: dict[str, Any] = {"max_new_tokens": 5, "temperature": 0.0}
        assert remote.generate(prompt, **kwargs) == tiny_scorer.generate(prompt, **kwargs)


def test_concurrent_clients_share_batches(tiny_model_dir: Path, sock: str) -> None:
    from engine.config import ModelConfig
    from engine.model import load_model

    loaded = load_model(ModelConfig(path=str(tiny_model_dir), device="cpu"))
    scorer = LMScorer(loaded.model, loaded.tokenizer, loaded.device, cache_slots=18, max_batch=8, gather_ms=20)
    clients = 6
    moves: list[list[chess.Move]] = [[] for _ in range(clients)]
    with ScorerServer(scorer, sock).start():
        remotes = [RemoteScorer(sock, tokenizer=loaded.tokenizer) for _ in range(clients)]

        def play(i: int) -> None:
            player = Player(EngineConfig(), remotes[i])
            board = board_after(OPENING[: i % 4])
            for _ in range(6):
                d = player.choose(board, engine_color=board.turn)
                assert d.source == "model", d
                moves[i].append(d.move)
                board.push(d.move)

        errors = run_threads(clients, play)
    assert not errors, errors
    assert all(len(m) == 6 for m in moves)
    assert scorer._batcher.largest > 1, "concurrent clients' requests never shared a forward"
    # each game's moves are the ones a lone local scorer chooses
    alone = LMScorer(loaded.model, loaded.tokenizer, loaded.device)
    for i in range(clients):
        player = Player(EngineConfig(), alone)
        board = board_after(OPENING[: i % 4])
        for mv in moves[i]:
            assert player.choose(board, engine_color=board.turn).move == mv
            board.push(mv)


def test_one_remote_scorer_shared_by_threads_batches_them(tiny_model_dir: Path, sock: str) -> None:
    """The bot's games are threads over one scorer: through a server they still share forwards."""
    from engine.config import ModelConfig
    from engine.model import load_model

    loaded = load_model(ModelConfig(path=str(tiny_model_dir), device="cpu"))
    scorer = LMScorer(loaded.model, loaded.tokenizer, loaded.device, cache_slots=12, max_batch=5, gather_ms=20)
    games = 5
    with ScorerServer(scorer, sock).start():
        shared = RemoteScorer(sock, tokenizer=loaded.tokenizer)
        barrier = threading.Barrier(games)

        def play(i: int) -> None:
            player = Player(EngineConfig(), shared)
            board = board_after(OPENING[: i % 4])
            for _ in range(4):
                barrier.wait(timeout=60)  # the games ask at the same time
                d = player.choose(board, engine_color=board.turn)
                assert d.source == "model", d
                board.push(d.move)

        errors = run_threads(games, play)
        assert not errors, errors
        assert shared.connections >= 2, "the threads' requests went one at a time"
        shared.close()
        assert shared.connections == 0
    assert scorer._batcher.largest > 1


def test_no_server_is_a_clear_error(sock: str) -> None:
    with pytest.raises(ServerError, match="no model server at .*mistral-chess serve"):
        RemoteScorer(sock)


def test_a_stale_socket_is_replaced_and_a_live_one_refused(tiny_scorer: LMScorer, sock: str) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock)
    stale.close()  # the file stays, nobody listens
    with ScorerServer(tiny_scorer, sock).start():
        assert RemoteScorer(sock).fast == tiny_scorer.fast
        with pytest.raises(ServerError, match="already listening"):
            ScorerServer(tiny_scorer, sock)
        assert os.stat(sock).st_mode & 0o077 == 0, "the socket is for its owner only"


def test_a_restarted_server_is_reconnected_and_a_dead_one_reported(tiny_scorer: LMScorer, sock: str) -> None:
    server = ScorerServer(tiny_scorer, sock).start()
    remote = RemoteScorer(sock)
    player = Player(EngineConfig(), remote)
    board = board_after(OPENING)
    first = player.choose(board, engine_color=board.turn)
    server.close()
    with ScorerServer(tiny_scorer, sock).start():
        again = player.choose(board, engine_color=board.turn)
    assert again.source == "model" and again.move == first.move
    assert remote.reconnects == 1
    # no server at all: the player answers a legal fallback move and says why
    d = player.choose(board, engine_color=board.turn)
    assert d.source == "error" and d.move in board.legal_moves
    assert "no model server" in " ".join(d.notes)


def test_malformed_requests_get_errors_and_the_server_goes_on(tiny_scorer: LMScorer, sock: str) -> None:
    from multiprocessing.connection import Client

    with ScorerServer(tiny_scorer, sock).start():
        conn = Client(sock, family="AF_UNIX")
        conn.send("hello")
        assert conn.recv()[0:2] == ("error", "ServerError")
        conn.send(("dance",))
        kind, name, text = conn.recv()
        assert (kind, name) == ("error", "ServerError") and "unknown request 'dance'" in text
        conn.send(("score", [1, 2, 3], [[4]], "not a trie"))
        kind, name, text = conn.recv()
        assert kind == "error" and "trie" in text
        conn.send(("ping",))
        assert conn.recv() == ("ok", None)
        conn.close()
        # the server still answers a proper client
        remote = RemoteScorer(sock)
        prompt = Prompt('[Event "?"]\n\n1.', False, " ")
        assert len(remote.score(prompt, [" e4", " d4"]).logprobs) == 2


def test_a_different_tokenizer_is_refused(tiny_scorer: LMScorer, sock: str) -> None:
    class Shifted:
        """A tokenizer whose ids are not the server's."""

        is_fast = False

        def __call__(self, texts: Any, add_special_tokens: bool = False) -> Any:
            ids = tiny_scorer.tokenizer(texts, add_special_tokens=add_special_tokens).input_ids
            return type("Out", (), {"input_ids": [[i + 1 for i in x] for x in ids]})()

    with ScorerServer(tiny_scorer, sock).start(), pytest.raises(ServerError, match="other ids"):
        RemoteScorer(sock, tokenizer=Shifted())


def test_uci_engine_with_model_server(tiny_model_dir: Path, tiny_scorer: LMScorer, sock: str, python_exe: str) -> None:
    """`mistral-chess uci` with the ModelServer option (model.server) plays through a server
    started with `serve`, the move its own loaded model would play."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    serve = subprocess.Popen(
        [python_exe, "-m", "engine.cli", "serve", "--socket", sock, "--games", "2", "--model", str(tiny_model_dir),
         "model.device=cpu", "log_level=WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert serve.stdout is not None
        line = serve.stdout.readline()
        assert "listening on" in line, (line, serve.stderr.read() if serve.poll() is not None else "")
        def bestmove(*args: str, setup: str = "") -> str:
            proc = subprocess.Popen([python_exe, "-m", "engine.cli", "uci", *args, "log_level=WARNING"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(f"uci\n{setup}isready\nposition startpos moves e2e4 e7e5\ngo movetime 5000\n")
            proc.stdin.flush()
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("bestmove"):
                    break
            proc.stdin.write("quit\n")
            proc.stdin.close()
            proc.wait(timeout=30)
            out = "".join(lines)
            assert lines and lines[-1].startswith("bestmove"), out
            assert "fallback" not in out, out
            return lines[-1].split()[1]

        served = bestmove(setup=f"setoption name ModelServer value {sock}\n")  # as a GUI sets it
        assert chess.Move.from_uci(served) in board_after(["e2e4", "e7e5"]).legal_moves
        # the move the same engine chooses with the model loaded in its own process
        assert served == bestmove("--model", str(tiny_model_dir), "model.device=cpu")
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    assert serve.returncode == 0
    assert not os.path.exists(sock), "the server removes its socket when stopped"


def test_serve_refuses_a_server_setting(sock: str, python_exe: str) -> None:
    out = subprocess.run([python_exe, "-m", "engine.cli", "serve", "--socket", sock, f"model.server={sock}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "model.server" in out.stderr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_the_served_models_board_windows_reach_the_clients_prompts(tiny_model_dir: Path, tmp_path: Path, sock: str) -> None:
    import shutil

    from engine.config import ModelConfig
    from engine.model import PROMPT_FILE
    from engine.uci import load_scorer

    model = tmp_path / "windowed"
    shutil.copytree(tiny_model_dir, model)
    (model / PROMPT_FILE).write_text("window_plies: 4\n")
    cfg = EngineConfig()
    cfg.model = ModelConfig(path=str(model), device="cpu")
    scorer = load_scorer(cfg)
    assert scorer.window_plies == 4
    board = board_after(OPENING)  # 6 plies: the window restarted after 4
    local = Player(cfg, scorer).prompt_for(board, engine_color=chess.WHITE).text
    assert f'[FEN "{board_after(OPENING[:4]).fen()}"]' in local and local.endswith("3. Bb5 a6 4.")
    with ScorerServer(scorer, sock).start():
        remote = RemoteScorer(sock)
        assert remote.window_plies == 4
        assert Player(EngineConfig(), remote).prompt_for(board, engine_color=chess.WHITE).text == local
        remote.close()
