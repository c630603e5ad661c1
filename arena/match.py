"""Playing many games: the schedule, the worker threads, and the two-engine match.

A :class:`Runner` plays a list of :class:`~arena.referee.GameTask` with
``concurrency`` games at a time. Each worker thread owns its engine processes
(started once, ``ucinewgame`` between games, restarted after a crash or stall) and
hands every finished game to one place that appends it to the game log and the PGN,
updates the progress bar and the JSON report, and asks whether to stop (SPRT).
Ctrl-C (or SIGTERM, from a scheduler or ``kill``) stops the workers, kills the engines,
drops the games in progress and keeps every finished one; the same command with
``--resume`` plays the rest.
"""

from __future__ import annotations

import dataclasses
import datetime
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger
from tqdm import tqdm

from arena.clock import TimeControl, parse_time_control
from arena.engines import EngineSpec
from arena.errors import ArenaError, EngineStartError
from arena.gamelog import GameLog, PgnWriter, default_log_path
from arena.openings import Opening, load_openings, order, suite_digest
from arena.referee import GameAborted, GameRecord, GameTask, MoveCallback, Rules, play_game
from arena.report import engine_stats, head_to_head, terminations, wdl, write_json
from arena.sprt import Sprt
from arena.uci_process import UciProcess
from engine.signals import sigterm_as_interrupt

DEFAULT_TC = "10+0.1"


@dataclasses.dataclass
class PlaySettings:
    """How games are played (shared by match, ladder and tournament; YAML keys)."""

    # BASE+INC seconds, MOVES/BASE, or inf. Empty: 10+0.1, or no clock when a
    # movetime, node or depth limit is given.
    tc: str = ""
    movetime_ms: int = 0  # fixed time per move (0: none)
    nodes: int = 0  # node budget per move (0: none)
    depth: int = 0  # depth budget per move (0: none)
    concurrency: int = 1  # games played at once
    max_plies: int = 200  # game plies after the opening, then a draw by adjudication (0: no limit)
    openings: str = ""  # PGN or EPD suite; "" = the bundled balanced suite
    opening_seed: int = -1  # -1: the suite's order; otherwise shuffled with this seed
    time_margin_ms: int = 50  # overrun allowed before a flag falls
    stall_timeout_s: float = 60.0  # with no time limit: the longest wait for a bestmove
    stop_grace_s: float = 1.0  # after a flag: wait for the late bestmove this long
    start_timeout_s: float = 120.0  # engine start (uciok, options, first readyok; a model may load)
    ready_timeout_s: float = 15.0  # readyok before each game
    resign: bool = True  # honour the project's engine's `info string resign`
    engine_logs: str = ""  # folder for per-engine protocol logs ("" = none)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ArenaError(f"concurrency must be >= 1, not {self.concurrency}")
        if self.max_plies < 0:
            raise ArenaError(f"max_plies must be >= 0, not {self.max_plies}")
        for name in ("time_margin_ms", "movetime_ms", "nodes", "depth"):
            if getattr(self, name) < 0:
                raise ArenaError(f"{name} must be >= 0")
        for name in ("stall_timeout_s", "stop_grace_s", "start_timeout_s", "ready_timeout_s"):
            if getattr(self, name) <= 0:
                raise ArenaError(f"{name} must be positive")

    def time_control(self) -> TimeControl:
        tc = self.tc or ("inf" if self.movetime_ms or self.nodes or self.depth else DEFAULT_TC)
        return parse_time_control(
            tc,
            movetime_ms=self.movetime_ms or None,
            nodes=self.nodes or None,
            depth=self.depth or None,
        )

    def rules(self, white: EngineSpec, black: EngineSpec, *, event: str) -> Rules:
        tc = self.time_control()
        return Rules(
            white_tc=white.time_control(tc),
            black_tc=black.time_control(tc),
            max_plies=self.max_plies,
            time_margin_ms=self.time_margin_ms,
            stall_timeout_s=self.stall_timeout_s,
            stop_grace_s=self.stop_grace_s,
            ready_timeout_s=self.ready_timeout_s,
            honour_resign=self.resign,
            event=event,
        )

    def suite(self) -> tuple[list[Opening], list[int]]:
        """The opening suite and its play order (the file's, or shuffled by ``opening_seed``)."""
        openings = load_openings(self.openings or None)
        return openings, order(openings, self.opening_seed if self.opening_seed >= 0 else None)

    def identity(self) -> dict[str, Any]:
        """Settings that must match when a match resumes."""
        return {
            "tc": self.time_control().describe(),
            "max_plies": self.max_plies,
            "opening_seed": self.opening_seed,
        }


def paired_schedule(
    a: int, b: int, games: int, opening_order: list[int], *, start_index: int = 0, start_pair: int = 0
) -> list[GameTask]:
    """Games of ``a`` against ``b``: each opening twice, colours swapped, ``a`` White first.

    Openings follow ``opening_order`` from its start for every pairing (so each pairing
    meets the same positions); ``pair`` ids count on from ``start_pair``.
    """
    tasks = []
    for g in range(games):
        local_pair = g // 2
        opening = opening_order[local_pair % len(opening_order)]
        white, black = (a, b) if g % 2 == 0 else (b, a)
        tasks.append(
            GameTask(
                index=start_index + g, white=white, black=black, opening=opening, pair=start_pair + local_pair
            )
        )
    return tasks


# In a ladder's or tournament's game log identity: games numbered by interleaved_schedule,
# whose numbers do not depend on the games per pairing (logs from before it named those instead).
INTERLEAVED_NUMBERING = "pairs numbered interleaved by pairing"


def interleaved_schedule(
    pairings: list[tuple[int, int]], games: int, opening_order: list[int]
) -> list[GameTask]:
    """``games`` games of every pairing, interleaved by opening pair: the first pair of each
    pairing, then the second pair of each, ... (so a stopped run has games in every pairing).

    Each pairing meets the openings of ``opening_order`` from its start, each twice with the
    colours swapped, its first engine White first. A game's index and pair id depend only on
    the pairings and its place among them, not on ``games``: pair ``j`` of pairing ``p`` is
    pair ``j * len(pairings) + p`` and its games are indices ``2 * pair`` and ``2 * pair + 1``.
    So a ladder or tournament resumed with more games per pairing plays on where it stopped
    (with an odd ``games`` the last pair's second game, index ``2 * pair + 1``, is left out
    and played when ``games`` is raised).
    """
    n = len(pairings)
    tasks = []
    for j in range((games + 1) // 2):
        opening = opening_order[j % len(opening_order)]
        for p, (a, b) in enumerate(pairings):
            pair = j * n + p
            for c in range(min(2, games - 2 * j)):
                white, black = (a, b) if c == 0 else (b, a)
                tasks.append(
                    GameTask(index=2 * pair + c, white=white, black=black, opening=opening, pair=pair)
                )
    return tasks


def check_resumed(done: list[GameRecord], tasks: list[GameTask], source: str) -> None:
    """Refuse to resume from games that are not the games this schedule plays at their index."""
    by_index = {t.index: t for t in tasks}
    for rec in done:
        task = by_index.get(rec.index)
        if task is None:
            continue  # a game beyond a lowered --games: kept, as a match keeps it
        if (rec.white_engine, rec.black_engine, rec.opening, rec.pair) != (
            task.white,
            task.black,
            task.opening,
            task.pair,
        ):
            raise ArenaError(
                f"{source}: game {rec.index + 1} of the log (engines {rec.white_engine}-{rec.black_engine}, "
                f"opening {rec.opening}, pair {rec.pair}) is not the game this run schedules there "
                f"(engines {task.white}-{task.black}, opening {task.opening}, pair {task.pair}); "
                "use other output files or --overwrite"
            )


@dataclasses.dataclass
class RunResult:
    records: list[GameRecord]
    interrupted: bool
    stopped_early: bool  # a stop rule (SPRT) ended the run before the schedule did
    restarts: dict[int, int]


class Runner:
    """Plays tasks with worker threads; the one place that records finished games."""

    def __init__(
        self,
        specs: list[EngineSpec],
        settings: PlaySettings,
        openings: list[Opening],
        *,
        event: str,
        log: GameLog | None = None,
        pgn: PgnWriter | None = None,
        on_record: Callable[[list[GameRecord]], None] | None = None,
        stop_rule: Callable[[list[GameRecord]], bool] | None = None,
        progress_text: Callable[[list[GameRecord]], str] | None = None,
        on_move: MoveCallback | None = None,
        show_progress: bool = True,
    ) -> None:
        self.specs = specs
        self.names = [s.name for s in specs]
        self.settings = settings
        self.openings = openings
        self.event = event
        self.log = log
        self.pgn = pgn
        self.on_record = on_record
        self.stop_rule = stop_rule
        self.progress_text = progress_text
        self.on_move = on_move
        self.show_progress = show_progress
        self._lock = threading.Lock()
        self._stop = threading.Event()  # Ctrl-C or a fatal error: abandon games in progress
        self._no_more = threading.Event()  # a stop rule fired: finish games in progress, start no more
        self._procs: list[UciProcess] = []
        self._error: BaseException | None = None
        self._interrupted = False
        self.restarts: dict[int, int] = {i: 0 for i in range(len(specs))}

    def run(self, tasks: list[GameTask], done: list[GameRecord]) -> RunResult:
        records = list(done)
        todo: queue.Queue[GameTask] = queue.Queue()
        finished = {r.index for r in done}
        pending = [t for t in tasks if t.index not in finished]
        for t in pending:
            todo.put(t)
        if self.stop_rule is not None and records and self.stop_rule(records):
            return RunResult(records, False, True, self.restarts)
        bar = tqdm(
            total=len(pending) + len(records),
            initial=len(records),
            unit="game",
            dynamic_ncols=True,
            disable=not self.show_progress,
        )
        if self.progress_text is not None and records:
            bar.set_postfix_str(self.progress_text(records))

        def record(rec: GameRecord) -> None:
            with self._lock:
                records.append(rec)
                if self.log is not None:
                    self.log.append(rec)
                if self.pgn is not None:
                    self.pgn.append(rec)
                if self.progress_text is not None:
                    bar.set_postfix_str(self.progress_text(records), refresh=False)
                bar.update(1)
                if self.on_record is not None:
                    self.on_record(records)
                if self.stop_rule is not None and self.stop_rule(records):
                    self._no_more.set()

        n_workers = min(self.settings.concurrency, max(1, len(pending)))
        workers = [
            threading.Thread(target=self._worker, args=(todo, record), name=f"arena-{i}", daemon=True)
            for i in range(n_workers)
        ]
        interrupted = False
        try:
            # SIGTERM (a scheduler, a container, `kill`) ends the run as Ctrl-C does:
            # finished games kept, engines killed, exit 130, --resume goes on.
            with sigterm_as_interrupt():
                for w in workers:
                    w.start()
                while any(w.is_alive() for w in workers):
                    for w in workers:
                        w.join(timeout=0.2)
        except KeyboardInterrupt:
            interrupted = True
            self._interrupted = True  # engines we kill now are not faults
            self._stop.set()
            self._kill_all()
            for w in workers:
                w.join(timeout=10)
        finally:
            bar.close()
            self._kill_all()
        if self._error is not None:
            raise self._error
        records.sort(key=lambda r: r.index)
        return RunResult(records, interrupted, self._no_more.is_set() and not todo.empty(), self.restarts)

    # -- workers ----------------------------------------------------------------------
    def _worker(self, todo: queue.Queue[GameTask], record: Callable[[GameRecord], None]) -> None:
        procs: dict[int, UciProcess] = {}
        try:
            while not self._stop.is_set() and not self._no_more.is_set():
                try:
                    task = todo.get_nowait()
                except queue.Empty:
                    return
                white = self._ready(procs, task.white, keep=(task.white, task.black))
                black = self._ready(procs, task.black, keep=(task.white, task.black))
                if self._stop.is_set():
                    return
                rules = self.settings.rules(self.specs[task.white], self.specs[task.black], event=self.event)
                try:
                    rec = play_game(
                        task,
                        self.names,
                        white,
                        black,
                        self.openings[task.opening],
                        rules,
                        self._stop,
                        on_move=self.on_move,
                    )
                except GameAborted:
                    return
                record(rec)
        except BaseException as exc:  # a fatal error (an engine that cannot start): stop everything
            with self._lock:
                if self._error is None and not self._interrupted:
                    self._error = exc
            self._stop.set()
        finally:
            for p in procs.values():
                p.shutdown()

    def _ready(self, procs: dict[int, UciProcess], idx: int, *, keep: tuple[int, int]) -> UciProcess:
        """The running process of engine ``idx`` (started or restarted as needed)."""
        for other in [k for k in procs if k not in keep]:
            procs.pop(other).shutdown()  # one pair of engines per worker: models are big
        proc = procs.get(idx)
        s = self.settings
        if proc is None:
            spec = self.specs[idx]
            log_file = None
            if s.engine_logs:
                slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.name)
                log_file = Path(s.engine_logs) / f"{slug}.{threading.current_thread().name}.log"
            proc = UciProcess(spec, log_file=log_file)
            with self._lock:
                self._procs.append(proc)
            procs[idx] = proc
            proc.start(ready_timeout=s.start_timeout_s)
        elif proc.broken or not proc.alive:
            with self._lock:
                self.restarts[idx] += 1
            try:
                proc.restart(ready_timeout=s.start_timeout_s)
            except EngineStartError as first:
                logger.warning("restart failed ({}); trying once more", first)
                time.sleep(1.0)
                proc.restart(ready_timeout=s.start_timeout_s)
        return proc

    def _kill_all(self) -> None:
        with self._lock:
            procs = list(self._procs)
        for p in procs:
            p.kill()


# -- the two-engine match --------------------------------------------------------------


@dataclasses.dataclass
class MatchOptions:
    games: int = 2
    pgn: str = ""
    json: str = ""
    log: str = ""  # game log; "" = beside --json (or --pgn)
    resume: bool = False
    overwrite: bool = False
    sprt: Sprt | None = None
    event: str = "mistral-chess arena match"
    show_progress: bool = True


def open_run_outputs(
    identity: dict[str, Any], opts: Any, tasks: list[GameTask], event: str
) -> tuple[GameLog | None, PgnWriter | None, list[GameRecord], dict[str, str]]:
    """:func:`open_outputs` for a ladder or tournament, plus the files its report names:
    PGN, JSON, log and plot (by default the JSON's path with ``.png``). A resumed log's games
    are checked against ``tasks`` (:func:`check_resumed`)."""
    mopts = MatchOptions(
        games=len(tasks),
        pgn=opts.pgn,
        json=opts.json,
        log=opts.log,
        resume=opts.resume,
        overwrite=opts.overwrite,
        event=event,
    )
    log, pgn, done = open_outputs(identity, mopts)
    check_resumed(done, tasks, str(log.path) if log else "the game log")
    plot = opts.plot or (str(Path(opts.json).with_suffix(".png")) if opts.json else "")
    paths = (("pgn", opts.pgn), ("json", opts.json), ("log", str(log.path) if log else ""), ("plot", plot))
    return log, pgn, done, {k: v for k, v in paths if v}


def open_outputs(
    identity: dict[str, Any], opts: MatchOptions
) -> tuple[GameLog | None, PgnWriter | None, list[GameRecord]]:
    """The game log (resumed or new) and the PGN writer, checked before any game is played."""
    log_path = Path(opts.log) if opts.log else default_log_path(opts.json or None, opts.pgn or None)
    pgn = PgnWriter(Path(opts.pgn), event=opts.event) if opts.pgn else None
    if pgn is not None and not (log_path is not None and log_path.exists() and opts.resume):
        pgn.check_new(resume=False, overwrite=opts.overwrite)
    log = None
    done: list[GameRecord] = []
    if log_path is not None:
        log, done = GameLog.open(log_path, identity, resume=opts.resume, overwrite=opts.overwrite)
    elif opts.resume:
        raise ArenaError("--resume needs the output of the earlier run: give the same --json, --pgn or --log")
    if pgn is not None:
        pgn.rewrite(done)
    return log, pgn, done


def run_identity(
    kind: str, specs: list[EngineSpec], settings: PlaySettings, openings: list[Opening], **extra: Any
) -> dict[str, Any]:
    """What a resumed match, ladder or tournament must share with the run it continues."""
    return {
        "kind": kind,
        "engines": [s.identity() for s in specs],
        **extra,
        "openings": suite_digest(openings),
        **settings.identity(),
    }


def match_report(
    specs: list[EngineSpec],
    settings: PlaySettings,
    records: list[GameRecord],
    *,
    planned: int,
    interrupted: bool,
    restarts: dict[int, int],
    sprt: Sprt | None,
    paths: dict[str, str],
) -> dict[str, Any]:
    """The JSON report of a match, engine 0's point of view."""
    h2h = head_to_head(records, 0, 1)
    report: dict[str, Any] = {
        "kind": "match",
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "engines": [s.to_dict() for s in specs],
        "games_planned": planned,
        "complete": len(records) >= planned or (sprt_state(sprt, records) or {}).get("decision") is not None,
        "interrupted": interrupted,
        "point_of_view": specs[0].name,
        **h2h,
        "terminations": terminations(records),
        "per_engine": {
            s.name: engine_stats(records, i, restarts=restarts.get(i, 0)) for i, s in enumerate(specs)
        },
        "sprt": sprt_state(sprt, records),
        "config": dataclasses.asdict(settings),
        "time_control": settings.time_control().describe(),
        "files": paths,
    }
    return report


def sprt_state(sprt: Sprt | None, records: list[GameRecord]) -> dict[str, Any] | None:
    if sprt is None:
        return None
    from arena.report import pentanomial

    w, d, lo = wdl(records, 0)
    penta = pentanomial(records, 0, 1)
    return sprt.state(w, d, lo, penta if sum(penta) else None)


def score_text(records: list[GameRecord], a: int = 0) -> str:
    """``+3 -1 =2 (66.7%)`` for the progress bar."""
    w, d, lo = wdl(records, a)
    n = w + d + lo
    pct = 100.0 * (w + 0.5 * d) / n if n else 0.0
    return f"+{w} -{lo} ={d} ({pct:.1f}%)"


def warn_repeated_openings(games: int, openings: int) -> None:
    """Games of one pairing beyond twice the suite's openings repeat a start with the same colours."""
    if games > 2 * openings:
        logger.warning(
            "{} games from {} openings: each opening is played about {:.1f} times with each colour; "
            "deterministic engines replay the same game each time (the report counts the repeats and gives the "
            "result over the distinct games). A suite of {} or more openings gives every game its own start",
            games, openings, games / (2 * openings), (games + 1) // 2,
        )  # fmt: skip


def run_match(
    specs: list[EngineSpec],
    settings: PlaySettings,
    opts: MatchOptions,
    *,
    on_move: MoveCallback | None = None,
) -> dict[str, Any]:
    """Play the match; write PGN, game log and JSON; return the report."""
    if len(specs) != 2:
        raise ArenaError(f"a match is between two engines, not {len(specs)}")
    if opts.games < 1:
        raise ArenaError("games must be >= 1")
    openings, play_order = settings.suite()
    warn_repeated_openings(opts.games, len(openings))
    tasks = paired_schedule(0, 1, opts.games, play_order)
    log, pgn, done = open_outputs(run_identity("match", specs, settings, openings), opts)
    if log is None:
        logger.warning("no --json, --pgn or --log: the games are not saved and a stopped match cannot resume")
    if done:
        logger.info("resuming: {} finished games read from {}", len(done), log.path if log else "?")
    paths = {
        k: v for k, v in (("pgn", opts.pgn), ("json", opts.json), ("log", str(log.path) if log else "")) if v
    }

    def report_of(
        records: list[GameRecord], *, interrupted: bool, restarts: dict[int, int]
    ) -> dict[str, Any]:
        return match_report(
            specs,
            settings,
            records,
            planned=opts.games,
            interrupted=interrupted,
            restarts=restarts,
            sprt=opts.sprt,
            paths=paths,
        )

    runner: Runner

    def on_record(records: list[GameRecord]) -> None:
        if opts.json:
            write_json(report_of(records, interrupted=False, restarts=runner.restarts), opts.json)

    def stop_rule(records: list[GameRecord]) -> bool:
        state = sprt_state(opts.sprt, records)
        return state is not None and state["decision"] is not None

    def progress(records: list[GameRecord]) -> str:
        text = score_text(records)
        state = sprt_state(opts.sprt, records)
        if state is not None:
            text += f" LLR {state['llr']:.2f} [{state['lower']:.2f}, {state['upper']:.2f}]"
        return text

    runner = Runner(
        specs,
        settings,
        openings,
        event=opts.event,
        log=log,
        pgn=pgn,
        on_record=on_record,
        stop_rule=stop_rule if opts.sprt is not None else None,
        progress_text=progress,
        on_move=on_move,
        show_progress=opts.show_progress,
    )
    result = runner.run(tasks, done)
    report = report_of(result.records, interrupted=result.interrupted, restarts=result.restarts)
    if report["repeated_games"]:
        dist = report["distinct"]
        logger.warning(
            "{} of the {} games repeat an earlier game move for move; over the {} distinct games: score {}, "
            "Elo {} ({} to {})",
            report["repeated_games"], report["games"], dist["games"], dist["score"], dist["elo"]["diff"],
            dist["elo"]["lower"], dist["elo"]["upper"],
        )  # fmt: skip
    if opts.json:
        write_json(report, opts.json)
    return report
