"""UCI protocol transcripts: in-process (fast, scripted models) and as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

import chess
import pytest

from engine.config import EngineConfig
from engine.prompt import Prompt
from engine.scoring import Cancelled, Scores
from engine.uci import UciEngine, parse_position

from .test_player import FakeScorer


class Lines:
    """A thread-safe stdout stand-in that records protocol lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._buf = ""
        self._cond = threading.Condition()

    def write(self, text: str) -> int:
        with self._cond:
            self._buf += text
            while "\n" in self._buf:
                line, self._buf = self._buf.split("\n", 1)
                self.lines.append(line)
            self._cond.notify_all()
        return len(text)

    def flush(self) -> None:
        pass

    def wait_for(self, prefix: str, timeout: float = 10.0, start: int = 0) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(start, len(self.lines)):
                    if self.lines[i].startswith(prefix):
                        return i, self.lines[i]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line starting with {prefix!r} within {timeout}s; got {self.lines!r}")
                self._cond.wait(left)


class SlowScorer(FakeScorer):
    def __init__(self, delay: float, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.delay = delay

    def score(self, prompt: Prompt, continuations: Sequence[str], cancel: threading.Event | None = None) -> Scores:
        end = time.monotonic() + self.delay
        while time.monotonic() < end:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            time.sleep(0.005)
        return super().score(prompt, continuations, cancel)


def make_engine(scorer_factory: Callable[[EngineConfig], object] | None = None, **cfg_sections: dict) -> tuple[UciEngine, Lines]:
    import dataclasses

    cfg = EngineConfig()
    for name, values in cfg_sections.items():
        setattr(cfg, name, dataclasses.replace(getattr(cfg, name), **values))
    out = Lines()
    factory = scorer_factory or (lambda c: FakeScorer())
    return UciEngine(cfg, out, loader=factory), out  # type: ignore[arg-type]


def run(engine: UciEngine, *lines: str) -> None:
    for line in lines:
        assert engine.handle(line) is not False


def bestmove(out: Lines, start: int = 0, timeout: float = 10.0) -> str:
    i, line = out.wait_for("bestmove", timeout, start)
    return line.split()[1]


def test_uci_handshake_lists_options_and_uciok() -> None:
    eng, out = make_engine()
    run(eng, "uci")
    assert out.lines[0].startswith("id name mistral-chess")
    assert out.lines[1].startswith("id author ")
    assert out.lines[-1] == "uciok"
    names = {line.split()[2] for line in out.lines if line.startswith("option name")}
    for required in ("ModelPath", "AdapterPath", "Device", "Quantization", "MoveSelection", "Temperature", "Seed",
                     "Retries", "Fallback", "ResignMode", "MoveOverhead", "PromptTemplate", "Hash", "Threads"):
        assert required in names
    run(eng, "isready")
    out.wait_for("readyok")
    eng.shutdown()


@pytest.mark.parametrize(
    ("position", "expected_moves"),
    [
        ("position fen 8/P6k/8/8/8/8/6K1/8 w - - 0 1", None),  # promotion
        ("position fen rnbqkbnr/ppp1p1pp/8/3pPp2/8/8/PPPP1PPP/RNBQKBNR w KQkq f6 0 3", None),  # en passant
        ("position fen r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R w KQkq - 0 1 moves e1g1 e8c8", None),  # castling
        ("position fen 4k3/8/8/8/8/8/3q4/4K3 w - - 0 1", {"e1d2"}),  # in check: only Kxd2
        ("position fen k7/8/8/8/8/8/1r6/K7 w - - 0 1", {"a1b2"}),  # single legal move
    ],
)
def test_go_answers_a_legal_move_with_info_line(position: str, expected_moves: set[str] | None) -> None:
    eng, out = make_engine()
    run(eng, "uci", "isready", "ucinewgame", position, "go wtime 5000 btime 5000 winc 100 binc 100")
    i, _ = out.wait_for("bestmove")
    move = out.lines[i].split()[1]
    board = parse_position(position.split()[1:])
    assert chess.Move.from_uci(move) in board.legal_moves
    if expected_moves is not None:
        assert move in expected_moves
    info = out.lines[i - 1].split()
    assert info[0] == "info" and "score" in info and info[info.index("score") + 1] == "cp"
    int(info[info.index("cp") + 1])  # an integer score
    for field in ("depth", "nodes", "time", "pv"):
        assert field in info
    eng.shutdown()


@pytest.mark.parametrize(
    "position",
    [
        "position fen rnb1kbnr/pppp1ppp/8/4p3/6Pq/5P2/PPPPP2P/RNBQKBNR w KQkq - 1 3",  # mated
        "position fen 7k/5Q2/6K1/8/8/8/8/8 b - - 0 1",  # stalemate
    ],
)
def test_no_legal_move_gives_bestmove_0000(position: str) -> None:
    eng, out = make_engine()
    run(eng, "uci", "isready", position, "go movetime 100")
    assert bestmove(out) == "0000"
    eng.shutdown()


def test_garbage_lines_are_ignored_with_info_string() -> None:
    eng, out = make_engine()
    run(eng, "uci", "hello world", "\x00\x01", "go go go", "isready")
    out.wait_for("readyok")
    assert any(line.startswith("info string unknown command ignored: hello world") for line in out.lines)
    # "go go go" is a go with junk arguments: reported, and still answered.
    assert any("unknown token 'go'" in line for line in out.lines)
    assert chess.Move.from_uci(bestmove(out)) in chess.Board().legal_moves
    eng.shutdown()


@pytest.mark.parametrize(
    ("position", "message"),
    [
        ("position fen 8/8/8/8/8/8/8/8 w - - 0 1", "not a legal position"),
        ("position fen rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR x KQkq - 0 1", "bad FEN"),
        ("position startpos moves e2e4 e2e4", "illegal move 2 'e2e4'"),
        ("position startpos moves e2e9", "is not a UCI move"),
        ("position fen", "FEN is missing"),
        ("position middlegame", "expected 'startpos' or 'fen'"),
    ],
)
def test_broken_position_is_reported_and_never_played_from(position: str, message: str, capfd) -> None:
    eng, out = make_engine()
    run(eng, "uci", "isready", position)
    assert any(line.startswith("info string ERROR") and message in line for line in out.lines)
    assert message in capfd.readouterr().err
    run(eng, "go movetime 100")
    assert bestmove(out) == "0000"
    # A good position afterwards plays normally again.
    n = len(out.lines)
    run(eng, "position startpos moves e2e4", "go movetime 200")
    board = chess.Board()
    board.push_uci("e2e4")
    assert chess.Move.from_uci(bestmove(out, start=n)) in board.legal_moves
    eng.shutdown()


def test_castling_as_king_takes_rook_is_accepted() -> None:
    board = parse_position(["fen", "r3k2r/8/8/8/8/8/8/R3K2R", "w", "KQkq", "-", "0", "1", "moves", "e1h1"])
    assert board.piece_at(chess.G1) == chess.Piece(chess.KING, chess.WHITE)


def test_slow_model_never_loses_on_time() -> None:
    # The model needs 3 s; the clock allows 0.4 * 3000 - 50 = 1150 ms: a fallback move comes in time.
    eng, out = make_engine(lambda c: SlowScorer(3.0), time={"move_overhead_ms": 50})
    run(eng, "uci", "isready", "position startpos")
    t0 = time.monotonic()
    run(eng, "go wtime 3000 btime 3000")
    move = bestmove(out, timeout=5)
    elapsed = time.monotonic() - t0
    assert 1.0 < elapsed < 1.6, elapsed
    assert chess.Move.from_uci(move) in chess.Board().legal_moves
    assert any("fallback" in line and "time budget" in line for line in out.lines)
    # The next move still works (the cancelled model call does not block it for long).
    n = len(out.lines)
    run(eng, "position startpos moves e2e4", "go movetime 200")
    bestmove(out, start=n, timeout=5)
    eng.shutdown()


def test_the_clocks_fallback_move_is_the_best_exchange_unless_random_is_asked() -> None:
    # The model needs 3 s, the move 200 ms: the instant move takes the undefended queen.
    eng, out = make_engine(lambda c: SlowScorer(3.0), time={"move_overhead_ms": 50})
    run(eng, "uci", "isready", "position fen 4k3/8/8/3q4/8/8/8/3RK3 w - - 0 1", "go movetime 200")
    assert bestmove(out, timeout=5) == "d1d5"
    assert "option name EmergencyMove type combo default material var material var random" in out.lines
    assert any(line.startswith("info string fallback material: time budget spent") and "Rxd5" in line
               for line in out.lines), out.lines
    n = len(out.lines)
    run(eng, "setoption name EmergencyMove value random", "position startpos", "go movetime 200")
    assert chess.Move.from_uci(bestmove(out, start=n, timeout=5)) in chess.Board().legal_moves
    assert eng.config.time.emergency == "random"
    assert any(line.startswith("info string fallback random: time budget spent") for line in out.lines[n:]), out.lines[n:]
    eng.shutdown()


def test_a_slow_model_that_the_clock_affords_is_waited_for() -> None:
    # 150 ms a move at 1.5 s + 50 ms: a slice of the clock (1500 / 30 + 40 - 30 = 60 ms) would
    # answer a fallback move; the clock affords 0.4 * 1500 - 30 = 570 ms, so the model's move comes.
    eng, out = make_engine(lambda c: SlowScorer(0.15), time={"move_overhead_ms": 30})
    run(eng, "uci", "isready", "position startpos")
    run(eng, "go wtime 1500 btime 1500 winc 50 binc 50")
    bestmove(out, timeout=5)
    assert not any("fallback" in line for line in out.lines), out.lines
    eng.shutdown()


def test_budget_is_a_share_of_the_clock() -> None:
    from engine.config import TimeConfig
    from engine.timeman import GoParams, budget_ms

    cfg = TimeConfig(move_overhead_ms=30, max_share=0.4)
    assert budget_ms(GoParams(wtime=1500, btime=9000, winc=50), chess.WHITE, cfg) == 0.4 * 1500 - 30
    assert budget_ms(GoParams(wtime=1500, btime=9000), chess.BLACK, cfg) == 0.4 * 9000 - 30
    assert budget_ms(GoParams(wtime=50, btime=50), chess.WHITE, cfg) == cfg.min_budget_ms, "never below the floor"
    assert budget_ms(GoParams(movetime=200, wtime=100), chess.WHITE, cfg) == 170, "movetime wins"
    assert budget_ms(GoParams(infinite=True), chess.WHITE, cfg) is None


def test_go_wtime_100_answers_quickly() -> None:
    # fastchess --compliance sends `go wtime 100 btime 100`.
    eng, out = make_engine()
    run(eng, "uci", "isready", "position startpos")
    t0 = time.monotonic()
    run(eng, "go wtime 100 btime 100")
    bestmove(out, timeout=2)
    assert time.monotonic() - t0 < 0.15


def test_go_infinite_waits_for_stop() -> None:
    eng, out = make_engine()
    run(eng, "uci", "isready", "position startpos", "go infinite")
    time.sleep(0.3)
    assert not any(line.startswith("bestmove") for line in out.lines)
    run(eng, "isready")  # answered while searching
    out.wait_for("readyok")
    run(eng, "stop")
    assert chess.Move.from_uci(bestmove(out, timeout=2)) in chess.Board().legal_moves
    eng.shutdown()


def test_go_ponder_then_ponderhit_answers() -> None:
    eng, out = make_engine()
    run(eng, "uci", "isready", "position startpos moves e2e4 e7e5", "go ponder wtime 5000 btime 5000")
    time.sleep(0.2)
    assert not any(line.startswith("bestmove") for line in out.lines)
    run(eng, "ponderhit")
    bestmove(out, timeout=3)
    eng.shutdown()


def test_go_depth_and_nodes_have_no_clock_and_still_answer() -> None:
    eng, out = make_engine()
    run(eng, "uci", "isready", "position startpos", "go depth 5")
    bestmove(out)
    n = len(out.lines)
    run(eng, "go nodes 1000 movestogo 10")
    bestmove(out, start=n)
    eng.shutdown()


def test_setoption_changes_config_and_rejects_bad_values() -> None:
    eng, out = make_engine()
    run(
        eng,
        "uci",
        "setoption name MoveSelection value generate",
        "setoption name Temperature value 0.7",
        "setoption name Retries value 99",
        "setoption name Fallback value pray",
        "setoption name Hash value 128",
        "setoption name NoSuchOption value 1",
        "setoption name ModelPath value /some/where",
        "setoption name AdapterPath value <empty>",
    )
    assert eng.config.search.mode == "generate"
    assert eng.config.search.temperature == 0.7
    assert eng.config.search.retries == 3  # out of range: kept
    assert eng.config.search.fallback == "constrained"  # bad combo value: kept
    assert eng.config.model.path == "/some/where"
    assert eng.config.model.adapter == ""
    text = "\n".join(out.lines)
    assert "setoption Retries: bad value '99'" in text
    assert "setoption Fallback: bad value 'pray'" in text
    assert "unknown option 'NoSuchOption'" in text
    eng.shutdown()


def test_model_load_failure_is_reported_and_engine_keeps_answering() -> None:
    def broken(cfg: EngineConfig) -> object:
        raise RuntimeError("model folder not found: /nope")

    eng, out = make_engine(broken)
    run(eng, "uci", "isready")
    out.wait_for("readyok")
    assert any("ERROR model not loaded: model folder not found: /nope" in line for line in out.lines)
    run(eng, "position startpos", "go movetime 100")
    assert chess.Move.from_uci(bestmove(out)) in chess.Board().legal_moves
    eng.shutdown()


def test_exception_inside_the_model_gives_a_legal_move() -> None:
    eng, out = make_engine(lambda c: FakeScorer(fail=True))
    run(eng, "uci", "isready", "position startpos moves d2d4", "go movetime 500")
    board = chess.Board()
    board.push_uci("d2d4")
    assert chess.Move.from_uci(bestmove(out)) in board.legal_moves
    assert any("model error" in line for line in out.lines)
    eng.shutdown()


def test_quit_returns_false() -> None:
    eng, _ = make_engine()
    assert eng.handle("quit") is False
    eng.shutdown()


# -- the real executable ------------------------------------------------------------------


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "engine", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_until(proc: subprocess.Popen[str], prefix: str, timeout: float) -> list[str]:
    assert proc.stdout is not None
    got: list[str] = []
    result: list[list[str]] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            got.append(line.rstrip("\n"))
            if line.startswith(prefix):
                result.append(got)
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    if not result:
        raise AssertionError(f"no {prefix!r} within {timeout}s; got {got!r}")
    return got


def test_executable_uciok_within_a_second_then_plays_and_exits_on_eof(tiny_model_dir) -> None:
    proc = _spawn(["--model", str(tiny_model_dir)])
    assert proc.stdin is not None
    t0 = time.monotonic()
    proc.stdin.write("uci\n")
    proc.stdin.flush()
    _read_until(proc, "uciok", timeout=5)
    assert time.monotonic() - t0 < 1.0
    proc.stdin.write("isready\n")
    proc.stdin.flush()
    _read_until(proc, "readyok", timeout=60)
    proc.stdin.write("position startpos moves e2e4\ngo movetime 2000\n")
    proc.stdin.flush()
    lines = _read_until(proc, "bestmove", timeout=10)
    board = chess.Board()
    board.push_uci("e2e4")
    assert chess.Move.from_uci(lines[-1].split()[1]) in board.legal_moves
    proc.stdin.close()  # EOF: clean exit
    assert proc.wait(timeout=10) == 0


def test_executable_bad_config_is_one_clear_line(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("search:\n  mode: telepathy\n")
    proc = _spawn(["--config", str(bad)])
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "search.mode: 'telepathy' is not one of" in err
    assert "Traceback" not in err


def test_go_sent_the_moment_bestmove_is_read_is_answered() -> None:
    # Regression: a fast GUI sends the next go while the search thread that wrote the
    # bestmove is still returning. The output sink below plays that GUI: on each
    # bestmove it sends the next go from another thread and holds the writer a moment.
    class EagerGui(Lines):
        engine: UciEngine | None = None
        remaining = 5

        def write(self, text: str) -> int:
            n = super().write(text)
            if text.startswith("bestmove") and self.remaining > 0 and self.engine is not None:
                self.remaining -= 1
                threading.Thread(target=self.engine.handle, args=("go wtime 10000 btime 10000",)).start()
                time.sleep(0.05)
            return n

    out = EagerGui()
    eng = UciEngine(EngineConfig(), out, loader=lambda c: FakeScorer())  # type: ignore[arg-type]
    out.engine = eng
    run(eng, "uci", "isready", "position startpos", "go wtime 10000 btime 10000")
    deadline = time.monotonic() + 10
    while sum(line.startswith("bestmove") for line in out.lines) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any("go ignored" in line for line in out.lines)
    assert sum(line.startswith("bestmove") for line in out.lines) == 6
    eng.shutdown()


def test_multipv_reports_the_most_likely_candidates_in_order() -> None:
    prefs = {"e4": -0.5, "d4": -1.0, "Nf3": -2.0, "c4": -3.0}
    eng, out = make_engine(lambda c: FakeScorer(prefs))
    run(eng, "uci", "setoption name MultiPV value 3", "isready", "position startpos", "go movetime 2000")
    i, _ = out.wait_for("bestmove")
    assert out.lines[i] == "bestmove e2e4"
    lines = [line.split() for line in out.lines[:i] if line.startswith("info depth")]
    assert [(w[w.index("multipv") + 1], w[w.index("pv") + 1]) for w in lines] == [("1", "e2e4"), ("2", "d2d4"), ("3", "g1f3")]
    scores = [int(w[w.index("cp") + 1]) for w in lines]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[2]
    # MultiPV 1 (the default): one line, the chosen move's.
    n = len(out.lines)
    run(eng, "setoption name MultiPV value 1", "go movetime 2000")
    i, _ = out.wait_for("bestmove", start=n)
    assert sum(line.startswith("info depth") for line in out.lines[n:i]) == 1
    run(eng, "setoption name MultiPV value 0")  # out of range: refused, kept
    assert eng.config.search.multipv == 1 and any("MultiPV" in line for line in out.lines[i:])
    eng.shutdown()


def test_guard_option_turns_the_tactical_guard_on_and_says_what_it_changed() -> None:
    prefs = {"Ng5": -0.1, "d4": -1.0}
    eng, out = make_engine(lambda c: FakeScorer(prefs))
    pos = "position startpos moves e2e4 d7d6 g1f3 e7e5"
    run(eng, "uci", "isready", pos, "go movetime 2000")
    i, _ = out.wait_for("bestmove")
    assert out.lines[i] == "bestmove f3g5"  # none by default: the model's choice
    assert "option name Guard type combo default none var none var material" in out.lines
    n = len(out.lines)
    run(eng, "setoption name Guard value material", "setoption name GuardTimeMs value 500", pos, "go movetime 2000")
    i, _ = out.wait_for("bestmove", start=n)
    assert out.lines[i] == "bestmove d2d4"
    assert any(line.startswith("info string guard: Ng5 (p ") for line in out.lines[n:i])
    assert eng.config.search.guard_ms == 500
    run(eng, "setoption name GuardMoves value 0")  # out of range: refused, kept
    assert eng.config.search.guard_moves == 5
    assert "option name GuardChecks type check default true" in out.lines
    run(eng, "setoption name GuardChecks value false")
    assert eng.config.search.guard_checks is False
    run(eng, "setoption name GuardChecks value yes")  # not true/false: refused, kept
    assert eng.config.search.guard_checks is False
    eng.shutdown()


def test_searchmoves_limits_the_choice_and_reports_what_it_cannot_use() -> None:
    prefs = {"e4": -0.5, "d4": -1.0, "Nf3": -2.0, "O-O": -0.1}
    eng, out = make_engine(lambda c: FakeScorer(prefs))
    run(eng, "uci", "setoption name MultiPV value 4", "isready", "position startpos")
    run(eng, "go movetime 2000 searchmoves g1f3 zz99 e2e5 d2d4")
    i, _ = out.wait_for("bestmove")
    assert out.lines[i] == "bestmove d2d4"
    assert "info string searchmoves: 'zz99' is not a UCI move; ignored" in out.lines
    assert "info string searchmoves: e2e5 is not legal in this position; ignored" in out.lines
    pvs = [line.split()[-1] for line in out.lines[:i] if line.startswith("info depth")]
    assert pvs == ["d2d4", "g1f3"]  # the candidates are the searchmoves alone
    # None of them legal: every legal move is searched, and it says so.
    n = len(out.lines)
    run(eng, "go movetime 2000 searchmoves e2e5")
    i, _ = out.wait_for("bestmove", start=n)
    assert out.lines[i] == "bestmove e2e4"
    assert "info string searchmoves: none of them is legal here; searching every legal move" in out.lines[n:]
    # Castling as king-takes-rook, as `position` takes it.
    n = len(out.lines)
    fen = "r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R w KQkq - 0 1"
    run(eng, f"position fen {fen}", "go movetime 2000 searchmoves e1h1 a2a3")
    i, _ = out.wait_for("bestmove", start=n)
    assert out.lines[i] == "bestmove e1g1"
    eng.shutdown()


def test_searchmoves_hold_in_generate_mode_and_for_the_fallback_move() -> None:
    # generate: " e4" is legal but outside searchmoves, so it counts as invalid and the retry's " d4" is played.
    eng, out = make_engine(lambda c: FakeScorer(outputs=[" e4", " d4"]), search={"mode": "generate"})
    run(eng, "uci", "isready", "position startpos", "go movetime 2000 searchmoves d2d4 c2c4")
    i, _ = out.wait_for("bestmove")
    assert out.lines[i] == "bestmove d2d4"
    eng.shutdown()
    # The clock's fallback move comes from the searchmoves too.
    for _ in range(5):
        eng, out = make_engine(lambda c: SlowScorer(3.0), time={"move_overhead_ms": 0, "min_budget_ms": 10})
        run(eng, "uci", "isready", "position startpos", "go movetime 30 searchmoves a2a3 h2h4")
        assert bestmove(out, timeout=5) in {"a2a3", "h2h4"}
        assert any("time budget" in line for line in out.lines)
        eng.shutdown()
