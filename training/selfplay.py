"""Stockfish self-play games in the LAION schema: ``mistral-chess dataset selfplay``.

Worker processes each run one single-threaded Stockfish and play whole chunks of
games. Stockfish is driven with raw UCI over pipes: at a few hundred nodes a move,
``chess.engine``'s asyncio machinery costs more than the search itself.

Resume without duplicates: game ``i`` is fully determined by ``(seed, i)`` (its
random opening plies or book line and its node budget come from that seed; Stockfish
at a fixed node count with one thread and a cleared hash is deterministic), and games
are written in chunks named by their index range (``games-00000000-00000250.parquet``),
each written to a temporary name and renamed when complete. A rerun plays only the
ranges no finished file covers; an interrupted chunk is played again from its start.
With ``max_seconds`` each worker stops at the deadline after its current game and
writes what it played as a shorter chunk (``games-00000000-00000097.parquet``), so a
time-limited run loses no finished game and a rerun still resumes exactly. Ctrl-C or
SIGTERM stops the workers, keeps the finished chunks and writes the manifest
(``complete: false``); the command exits with 130.

Variety: at a fixed node count the opening is the only source of variety (two random
plies allow only 400 games). ``nodes_jitter`` draws each game's node budget from
``nodes * (1 +- jitter)``, and ``book_fraction`` of the games start from a book line
(the arena's balanced suite by default), which also puts real opening moves in the data.
A book line and one node budget fix the whole game, so book games repeat once a set is
larger than lines x budgets; ``jitter_per_move`` draws a budget for every move instead.
``mistake_rate`` makes a share of the moves after the opening mistakes (a random legal move,
or Stockfish's move at ``mistake_nodes``): games with blunders to punish and to survive,
which a fixed budget against itself hardly plays.

Columns (LAION): ``Moves`` (list of UCI strings), ``Termination`` (python-chess
``Termination`` name), ``Result`` (``1-0``, ``0-1``, ``1/2-1/2``).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import queue
import random
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chess
from loguru import logger

from engine.signals import sigterm_as_interrupt
from training.config import SelfPlayConfig
from training.errors import SelfPlayError

CHUNK_RE = re.compile(r"^games-(\d{8})-(\d{8})\.parquet$")
MANIFEST = "manifest.json"
CONFIG_FILE = "selfplay_config.yaml"
# Keys that define which game index i is; changing them in an existing folder would mix games.
IDENTITY_KEYS = (
    "seed", "nodes", "depth", "movetime_ms", "elo", "hash_mb", "random_plies_min", "random_plies_max",
    "claim_draws", "max_plies", "nodes_jitter", "book_fraction", "book", "jitter_per_move",
    "mistake_rate", "mistake_nodes",
)  # fmt: skip
# Values of identity keys added later: a folder written before them used these.
IDENTITY_DEFAULTS: dict[str, Any] = {
    "nodes_jitter": 0.0, "book_fraction": 0.0, "book": "", "jitter_per_move": False,
    "mistake_rate": 0.0, "mistake_nodes": 0,
}  # fmt: skip


def find_stockfish(configured: str = "") -> str:
    """The Stockfish binary: the configured path, $STOCKFISH_PATH, PATH, or Debian's location
    (the arena's finder, whose error names every place it looked)."""
    from arena.engines import find_stockfish as arena_find_stockfish
    from arena.errors import StockfishNotFoundError

    try:
        return arena_find_stockfish(configured or None)
    except StockfishNotFoundError as exc:
        raise SelfPlayError(f"{exc} (self-play: set stockfish=PATH)") from None


class UciPipe:
    """A Stockfish process spoken to in raw UCI over pipes (no asyncio, no per-move objects)."""

    def __init__(self, path: str, *, hash_mb: int, elo: int) -> None:
        try:
            self.proc = subprocess.Popen(
                [path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
            )
        except OSError as exc:
            raise SelfPlayError(f"cannot start Stockfish {path!r}: {exc}") from None
        self.path = path
        self.options: dict[str, str] = {}
        self.send("uci")
        for line in self._lines_until("uciok"):
            if line.startswith("option name "):
                name = line[len("option name ") :].split(" type ")[0]
                self.options[name] = line
        self.send("setoption name Threads value 1")
        self.send(f"setoption name Hash value {hash_mb}")
        if elo:
            lo, hi = self.spin_range("UCI_Elo")
            if not lo <= elo <= hi:
                self.close()
                raise SelfPlayError(f"elo={elo} is outside this Stockfish's UCI_Elo range {lo}..{hi}")
            self.send("setoption name UCI_LimitStrength value true")
            self.send(f"setoption name UCI_Elo value {elo}")
        self.send("isready")
        for _ in self._lines_until("readyok"):
            pass

    def spin_range(self, name: str) -> tuple[int, int]:
        line = self.options.get(name)
        if line is None:
            self.close()
            raise SelfPlayError(f"{self.path} has no UCI option {name}")
        parts = line.split()
        return int(parts[parts.index("min") + 1]), int(parts[parts.index("max") + 1])

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command + "\n")
        except (BrokenPipeError, OSError):
            raise SelfPlayError(f"Stockfish ({self.path}) exited unexpectedly") from None

    def _lines_until(self, prefix: str) -> Iterator[str]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise SelfPlayError(f"Stockfish ({self.path}) exited unexpectedly (waiting for {prefix!r})")
            yield line
            if line.startswith(prefix):
                return

    def bestmove(self, moves: list[str], go: str) -> str:
        self.send("position startpos moves " + " ".join(moves) if moves else "position startpos")
        self.send(go)
        line = ""
        for line in self._lines_until("bestmove"):  # noqa: B007 - the last line is the answer
            continue
        return line.split()[1]

    def new_game(self) -> None:
        self.send("ucinewgame")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(timeout=5)
            except (SelfPlayError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def go_command(cfg: SelfPlayConfig, nodes: int | None = None) -> str:
    """The ``go`` line; ``nodes`` replaces ``cfg.nodes`` (a game's jittered budget)."""
    parts = ["go"]
    nodes = cfg.nodes if nodes is None else nodes
    if nodes:
        parts += ["nodes", str(nodes)]
    if cfg.depth:
        parts += ["depth", str(cfg.depth)]
    if cfg.movetime_ms:
        parts += ["movetime", str(cfg.movetime_ms)]
    return " ".join(parts)


def game_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"selfplay:{seed}:{index}")


# The jitter and the book draw use their own streams, so that with both off every game is
# the one earlier versions played for (seed, i) (the shipped data sets stay reproducible).
def nodes_range(cfg: SelfPlayConfig) -> tuple[int, int]:
    """The node budgets a jittered game draws from: ``nodes * (1 +- nodes_jitter)``, rounded."""
    lo = max(1, round(cfg.nodes * (1.0 - cfg.nodes_jitter)))
    return lo, max(lo, round(cfg.nodes * (1.0 + cfg.nodes_jitter)))


def game_nodes(cfg: SelfPlayConfig, index: int) -> int:
    """Game ``index``'s node budget: ``nodes``, or uniform in ``nodes * (1 +- nodes_jitter)``."""
    if not cfg.nodes_jitter:
        return cfg.nodes
    rng = random.Random(f"selfplay-nodes:{cfg.seed}:{index}")
    return rng.randint(*nodes_range(cfg))


def move_nodes(cfg: SelfPlayConfig, index: int) -> Iterator[int]:
    """Game ``index``'s node budget for each of its moves in turn (``jitter_per_move``): uniform
    in ``nodes * (1 +- nodes_jitter)``, from a stream of its own so a rerun plays the same game."""
    rng = random.Random(f"selfplay-move-nodes:{cfg.seed}:{index}")
    lo, hi = nodes_range(cfg)
    while True:
        yield rng.randint(lo, hi)


def move_mistakes(cfg: SelfPlayConfig, index: int) -> random.Random:
    """Game ``index``'s stream for ``mistake_rate`` (read by :func:`draw_mistake`), its own so
    that games without mistakes stay as they were."""
    return random.Random(f"selfplay-mistakes:{cfg.seed}:{index}")


def draw_mistake(stream: random.Random, cfg: SelfPlayConfig, board: chess.Board) -> tuple[bool, str | None]:
    """Whether the move at ``board`` is a mistake (one draw of the game's stream) and, for a
    random mistake (``mistake_nodes: 0``), its move (one more draw); a shallow mistake's move
    is Stockfish's, so None. The one rule for self-play and for finding its mistakes again."""
    if stream.random() >= cfg.mistake_rate:
        return False, None
    if cfg.mistake_nodes:
        return True, None
    return True, stream.choice(list(board.legal_moves)).uci()


def game_book_line(cfg: SelfPlayConfig, index: int, book: list[list[str]]) -> list[str] | None:
    """The book line game ``index`` starts from (UCI moves), or None (random plies)."""
    if not book or not cfg.book_fraction:
        return None
    rng = random.Random(f"selfplay-book:{cfg.seed}:{index}")
    if rng.random() >= cfg.book_fraction:
        return None
    return book[rng.randrange(len(book))]


def load_book(cfg: SelfPlayConfig) -> list[list[str]]:
    """The opening lines of ``cfg.book`` (the arena's bundled suite when empty) as UCI moves
    from the standard position; [] when ``book_fraction`` is 0."""
    if not cfg.book_fraction:
        return []
    from arena.errors import OpeningsError
    from arena.openings import load_openings

    try:
        openings = load_openings(cfg.book or None)
    except OpeningsError as exc:
        raise SelfPlayError(f"book: {exc}") from None
    start = chess.Board().fen()
    lines = []
    for o in openings:
        if o.fen != start:
            raise SelfPlayError(f"book: opening {o.name!r} does not start from the standard position (self-play games must)")
        lines.append([m.uci() for m in o.moves])
    return lines


@dataclasses.dataclass
class PlayedGame:
    moves: list[str]
    termination: str
    result: str


def game_over(board: chess.Board, *, claim_draws: bool) -> chess.Termination | None:
    """How the game ended, or None. Claimable draws only when they have happened on the
    board (threefold repetition, fifty moves): ``Board.outcome(claim_draw=True)`` also tries
    every legal move for a repetition, which costs more than a 100-node search."""
    outcome = board.outcome(claim_draw=False)
    if outcome is not None:
        return outcome.termination
    if claim_draws:
        if board.halfmove_clock >= 100:
            return chess.Termination.FIFTY_MOVES
        if board.is_repetition(3):
            return chess.Termination.THREEFOLD_REPETITION
    return None


def _result(board: chess.Board, termination: chess.Termination) -> str:
    if termination == chess.Termination.CHECKMATE:
        return "0-1" if board.turn == chess.WHITE else "1-0"
    return "1/2-1/2"


def opening_moves(cfg: SelfPlayConfig, index: int, book: list[list[str]]) -> list[str]:
    """Game ``index``'s moves before Stockfish's first (UCI): its book line, or its random plies."""
    line = game_book_line(cfg, index, book)
    if line is not None:
        return list(line)
    board = chess.Board()
    rng = game_rng(cfg.seed, index)
    for _ in range(rng.randint(cfg.random_plies_min, cfg.random_plies_max)):
        legal = list(board.legal_moves)
        if not legal:
            break
        board.push(rng.choice(legal))
    return [m.uci() for m in board.move_stack]


def play_game(engine: UciPipe, cfg: SelfPlayConfig, index: int, book: list[list[str]] | None = None) -> PlayedGame | None:
    """Game ``index``: a book line or random opening plies, then Stockfish against itself
    at the game's node budget. None: discarded (too long)."""
    board = chess.Board()
    moves = opening_moves(cfg, index, book or [])
    for uci in moves:
        board.push_uci(uci)
    go = go_command(cfg, game_nodes(cfg, index))
    budgets = move_nodes(cfg, index) if cfg.jitter_per_move else None
    mistakes = move_mistakes(cfg, index) if cfg.mistake_rate else None
    shallow = f"go nodes {cfg.mistake_nodes}" if cfg.mistake_nodes else ""
    engine.new_game()
    while True:
        termination = game_over(board, claim_draws=cfg.claim_draws)
        if termination is not None:
            return PlayedGame(moves, termination.name, _result(board, termination))
        if len(moves) >= cfg.max_plies:
            return None
        if budgets is not None:
            go = go_command(cfg, next(budgets))
        mistake, random_uci = draw_mistake(mistakes, cfg, board) if mistakes is not None else (False, None)
        uci = random_uci or engine.bestmove(moves, shallow if mistake else go)
        try:
            move = chess.Move.from_uci(uci)
        except ValueError:
            raise SelfPlayError(f"Stockfish answered {uci!r} at {board.fen()}") from None
        if not board.is_legal(move):
            raise SelfPlayError(f"Stockfish played the illegal move {uci} at {board.fen()}")
        board.push(move)
        moves.append(uci)


def chunk_name(start: int, end: int) -> str:
    return f"games-{start:08d}-{end:08d}.parquet"


def write_chunk(folder: Path, start: int, end: int, games: list[PlayedGame]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "Moves": pa.array([g.moves for g in games], type=pa.list_(pa.string())),
            "Termination": pa.array([g.termination for g in games], type=pa.string()),
            "Result": pa.array([g.result for g in games], type=pa.string()),
        }
    )
    final = folder / chunk_name(start, end)
    tmp = folder / (final.name + f".tmp{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, final)  # atomic: a chunk file exists only when complete
    return final


def _worker(cfg: SelfPlayConfig, stockfish: str, tasks: Any, progress: Any, deadline: float | None = None) -> None:
    """Worker process: play each (start, end) task, write its chunk, report every game.
    At ``deadline`` (a ``time.time()``): write the games played so far as a chunk, stop."""
    folder = Path(cfg.out)
    book = load_book(cfg)
    parent = os.getppid()
    engine = UciPipe(stockfish, hash_mb=cfg.hash_mb, elo=cfg.elo)
    try:
        while True:
            if deadline is not None and time.time() >= deadline:
                progress.put(("stopped", None))
                return
            task = tasks.get()
            if task is None:
                return
            start, end = task
            games: list[PlayedGame] = []
            discarded = 0
            i = start
            while i < end and not (deadline is not None and time.time() >= deadline):
                if os.getppid() != parent:  # the main process was killed: stop, leave the chunk unwritten
                    return
                game = play_game(engine, cfg, i, book)
                if game is None:
                    discarded += 1
                else:
                    games.append(game)
                progress.put(("game", 1))
                i += 1
            if i > start:  # cut short at the deadline: the chunk covers [start, i) only
                write_chunk(folder, start, i, games)
            progress.put(("chunk", (start, i, len(games), discarded, i < end)))
    except SelfPlayError as exc:
        progress.put(("error", str(exc)))
    except Exception as exc:  # report, so the parent can stop cleanly and say why
        progress.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        engine.close()


def finished_chunks(folder: Path) -> list[tuple[int, int]]:
    out = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = CHUNK_RE.match(p.name)
            if m:
                out.append((int(m.group(1)), int(m.group(2))))
    return sorted(out)


def missing_ranges(cfg: SelfPlayConfig, done: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Chunk-aligned index ranges of [0, games) that no finished chunk covers."""
    covered = [False] * cfg.games
    for start, end in done:
        for i in range(start, min(end, cfg.games)):
            covered[i] = True
    tasks: list[tuple[int, int]] = []
    for c0 in range(0, cfg.games, cfg.chunk_games):
        c1 = min(c0 + cfg.chunk_games, cfg.games)
        i = c0
        while i < c1:
            if covered[i]:
                i += 1
                continue
            j = i
            while j < c1 and not covered[j]:
                j += 1
            tasks.append((i, j))
            i = j
    return tasks


def _check_folder_config(folder: Path, cfg: SelfPlayConfig) -> None:
    from engine.configtools import dump_yaml, read_yaml, to_dict

    cfg_file = folder / CONFIG_FILE
    if cfg_file.is_file():
        old = read_yaml(cfg_file)
        new = to_dict(cfg)
        was = {k: old.get(k, IDENTITY_DEFAULTS.get(k)) for k in IDENTITY_KEYS}
        changed = [k for k in IDENTITY_KEYS if was[k] not in (None, new[k])]
        if changed:
            diffs = ", ".join(f"{k}: {was[k]!r} -> {new[k]!r}" for k in changed)
            raise SelfPlayError(
                f"{folder} holds games made with other settings ({diffs}); "
                "use another output folder or the same settings"
            )
    dump_yaml(cfg, cfg_file)


def _write_manifest(folder: Path, cfg: SelfPlayConfig, extra: dict[str, Any]) -> dict[str, Any]:
    import pyarrow.parquet as pq

    chunks = []
    rows = 0
    for start, end in finished_chunks(folder):
        n = pq.ParquetFile(folder / chunk_name(start, end)).metadata.num_rows
        rows += n
        chunks.append({"file": chunk_name(start, end), "first_game": start, "end_game": end, "rows": n})
    manifest = {
        "schema": "LAION strategic game dataset (chess): Moves, Termination, Result",
        "games_requested": cfg.games,
        "games_written": rows,
        "chunks": chunks,
        **extra,
    }
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, folder / MANIFEST)
    return manifest


def run_selfplay(cfg: SelfPlayConfig, *, progress_bar: bool = True) -> dict[str, Any]:
    """Play the games of ``cfg`` that ``cfg.out`` does not hold yet; returns the manifest."""
    from tqdm import tqdm

    stockfish = find_stockfish(cfg.stockfish)
    folder = Path(cfg.out)
    folder.mkdir(parents=True, exist_ok=True)
    _check_folder_config(folder, cfg)
    for stale in folder.glob("*.parquet.tmp*"):  # chunks a killed run left half-written
        stale.unlink()
    # Fail fast (bad path, bad elo, bad book) before starting workers.
    UciPipe(stockfish, hash_mb=cfg.hash_mb, elo=cfg.elo).close()
    load_book(cfg)

    done = finished_chunks(folder)
    tasks = missing_ranges(cfg, done)
    todo = sum(e - s for s, e in tasks)
    workers = min(cfg.worker_count, max(1, len(tasks)))
    logger.info(
        "self-play: {} games requested, {} to play in {} chunks, {} workers, {}{}{}{}{}",
        cfg.games, todo, len(tasks), workers, go_command(cfg),
        f" (nodes +-{cfg.nodes_jitter:.0%} a game)" if cfg.nodes_jitter else "",
        f", {cfg.book_fraction:.0%} of games from book lines" if cfg.book_fraction else "",
        (f", {cfg.mistake_rate:.1%} of moves mistakes ("
         + (f"Stockfish at {cfg.mistake_nodes} nodes)" if cfg.mistake_nodes else "random legal moves)")
         if cfg.mistake_rate else ""),
        f", stopping after {cfg.max_seconds:g} s" if cfg.max_seconds else "",
    )  # fmt: skip
    t0 = time.perf_counter()
    deadline = time.time() + cfg.max_seconds if cfg.max_seconds else None
    discarded = 0
    played = 0
    timed_out = False
    if tasks:
        # fork: workers need only chess and a pipe, and start at once (spawn would re-import
        # the caller's main module, which breaks plain scripts without a main guard).
        ctx: Any = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        task_q: Any = ctx.Queue()
        progress_q: Any = ctx.Queue()
        # Largest-first is unnecessary (chunks are equal); put a stop marker per worker.
        for t in tasks:
            task_q.put(t)
        for _ in range(workers):
            task_q.put(None)
        procs = [
            ctx.Process(target=_worker, args=(cfg, stockfish, task_q, progress_q, deadline), daemon=True)
            for _ in range(workers)
        ]
        for p in procs:
            p.start()
        bar = tqdm(total=todo, unit="game", desc="self-play", disable=not progress_bar, smoothing=0.05)
        chunks_left = len(tasks)
        stopped = 0  # workers that stopped at the deadline
        error: str | None = None
        try:
            # SIGTERM (a scheduler's stop, `kill PID`) ends the run as Ctrl-C does: workers
            # stopped, finished chunks kept, the manifest written. Entered after the workers
            # start, so they keep the default action that terminate() relies on.
            with sigterm_as_interrupt():
                while chunks_left and error is None:
                    try:
                        kind, payload = progress_q.get(timeout=1.0)
                    except queue.Empty:
                        if not any(p.is_alive() for p in procs):
                            # Everything a worker put is readable once it has exited (its queue
                            # flushes at exit), so an empty queue here means nothing is left.
                            if deadline is not None and time.time() >= deadline:
                                timed_out = True
                                break
                            error = "all self-play workers exited before finishing"
                        continue
                    if kind == "game":
                        bar.update(payload)
                        played += payload
                    elif kind == "chunk":
                        chunks_left -= 1
                        discarded += payload[3]
                        timed_out = timed_out or payload[4]  # cut short at the deadline
                    elif kind == "stopped":
                        stopped += 1
                        if stopped == workers:
                            timed_out = True
                            break
                    elif kind == "error":
                        error = payload
                if timed_out:  # the workers' last chunk messages may still be queued
                    while True:
                        try:
                            kind, payload = progress_q.get(timeout=0.5)
                        except queue.Empty:
                            break
                        if kind == "game":
                            played += payload
                        elif kind == "chunk":
                            discarded += payload[3]
        finally:
            bar.close()
            # Tasks left in the queue (a time limit, an error) would block this process's
            # exit: its queue feeder thread waits for a reader that is gone.
            task_q.cancel_join_thread()
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(timeout=10)
            if (error is not None or chunks_left) and not timed_out:
                _write_manifest(folder, cfg, {"complete": False})
        if error is not None:
            raise SelfPlayError(f"self-play stopped: {error} (finished chunks are kept; rerun to resume)")
    elapsed = time.perf_counter() - t0
    manifest = _write_manifest(
        folder,
        cfg,
        {
            "complete": not timed_out,
            "last_run": {
                "games_played": played,
                "discarded_too_long": discarded,
                "seconds": round(elapsed, 2),
                "games_per_s": round(played / elapsed, 2) if played and elapsed > 0 else None,
                "workers": workers,
                "go": go_command(cfg),
                "nodes_jitter": cfg.nodes_jitter,
                "book_fraction": cfg.book_fraction,
                "stopped_at_time_limit": timed_out,
            },
        },
    )
    if timed_out:
        logger.info("self-play: stopped at max_seconds={:g}; rerun the same command to continue", cfg.max_seconds)
    logger.info("self-play: {} games in {} ({} chunks)", manifest["games_written"], folder, len(manifest["chunks"]))
    return manifest
