"""The Elo ladder: one engine against Stockfish at several ``UCI_Elo`` levels.

Every level is played with the same opening pairs, interleaved (a pair at each level,
then the next pair), so a stopped ladder still has games at every level. The
engine's absolute Elo is the maximum-likelihood fit over all games
(:func:`arena.elo.fit_absolute`), on Stockfish's ``UCI_Elo`` scale (calibrated by
its authors against CCRL-rated engines at 120+1: engine Elo, not Lichess or FIDE).

Anchors (``--anchor NAME``) are engines below Stockfish's weakest level (``UCI_Elo``
1320, and 1350 in Stockfish 15.1), each with an Elo on the same scale measured by a ladder
of its own (its calibration, kept in ``arena/data/anchors.yaml`` with the error and the
command): an engine that loses nearly every game to the weakest Stockfish scores points
against an anchor, which narrows its interval. The fit takes an anchor's Elo as exact;
the report keeps its calibration error beside it.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import shlex
from pathlib import Path
from typing import Any

from arena.elo import fit_absolute, score_to_elo
from arena.engines import EngineSpec, parse_engine
from arena.errors import ArenaError
from arena.match import (
    INTERLEAVED_NUMBERING,
    PlaySettings,
    Runner,
    interleaved_schedule,
    open_run_outputs,
    run_identity,
    score_text,
)
from arena.referee import GameRecord, GameTask
from arena.report import engine_stats, terminations, wdl, write_json

DEFAULT_LEVELS = (1320, 1500, 1700, 2000)
ANCHORS_FILE = Path(__file__).resolve().parent / "data" / "anchors.yaml"


@dataclasses.dataclass(frozen=True)
class Anchor:
    """A calibrated ladder opponent below Stockfish's weakest ``UCI_Elo``."""

    name: str
    engine: list[str]  # engine spec words, as after --engine
    elo: float  # on Stockfish's UCI_Elo scale
    error: float  # 95% half-width of the calibration
    calibration: str  # how it was measured


def load_anchors(path: str | Path = ANCHORS_FILE) -> dict[str, Anchor]:
    """The anchors of a YAML file (``anchors: {NAME: {engine, elo, error, calibration}}``)."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ArenaError(f"anchors file {str(path)!r}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ArenaError(f"anchors file {str(path)!r}: not valid YAML ({exc})") from None
    table = doc.get("anchors") if isinstance(doc, dict) else None
    if not isinstance(table, dict) or not table:
        raise ArenaError(f"anchors file {str(path)!r}: expected a mapping 'anchors: {{NAME: {{engine, elo, error, calibration}}}}'")
    out: dict[str, Anchor] = {}
    for name, entry in table.items():
        where = f"anchors file {str(path)!r}, anchor {name!r}"
        if not isinstance(entry, dict):
            raise ArenaError(f"{where}: expected a mapping with engine, elo, error, calibration")
        unknown = sorted(set(entry) - {"engine", "elo", "error", "calibration"})
        if unknown:
            raise ArenaError(f"{where}: unknown key {unknown[0]!r} (allowed: engine, elo, error, calibration)")
        engine = entry.get("engine")
        words = shlex.split(engine) if isinstance(engine, str) else engine
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            raise ArenaError(f"{where}: engine must be an engine spec (a string or a list of words)")
        numbers = {}
        for key in ("elo", "error"):
            value = entry.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ArenaError(f"{where}: {key} must be a number, not {value!r}")
            numbers[key] = float(value)
        if numbers["error"] < 0:
            raise ArenaError(f"{where}: error must be >= 0, not {numbers['error']}")
        out[str(name)] = Anchor(str(name), words, numbers["elo"], numbers["error"], str(entry.get("calibration") or ""))
    return out


@dataclasses.dataclass
class LadderOptions:
    levels: list[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_LEVELS))
    anchors: list[str] = dataclasses.field(default_factory=list)  # names in anchors_file
    anchors_file: str = ""  # "" = arena/data/anchors.yaml
    games: int = 10  # per level (and per anchor)
    pgn: str = ""
    json: str = ""
    log: str = ""
    plot: str = ""  # "" = beside the JSON report
    resume: bool = False
    overwrite: bool = False
    show_progress: bool = True
    stockfish: str | None = None


def ladder_schedule(n_levels: int, games: int, opening_order: list[int]) -> list[GameTask]:
    """Engine 0 against engines 1..n_levels, interleaved by opening pair; a game's index does
    not depend on ``games``, so ``--resume`` may raise it (:func:`arena.match.interleaved_schedule`)."""
    return interleaved_schedule([(0, k + 1) for k in range(n_levels)], games, opening_order)


def ladder_report(
    engine: EngineSpec,
    opponents: list[EngineSpec],
    settings: PlaySettings,
    records: list[GameRecord],
    anchors: dict[str, Anchor] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    anchors = anchors or {}
    levels = []
    fit_games: list[tuple[float, float]] = []
    for k, opp in enumerate(opponents, start=1):
        games = [r for r in records if k in (r.white_engine, r.black_engine)]
        w, d, lo = wdl(games, 0)
        n = w + d + lo
        score = (w + 0.5 * d) / n if n else None
        assert opp.elo is not None
        perf = None
        if score is not None and 0 < score < 1:
            perf = round(opp.elo + score_to_elo(score), 1)
        levels.append(
            {
                "requested": opp.requested_elo,
                "elo": opp.elo,
                "name": opp.name,
                "games": n,
                "wins": w,
                "draws": d,
                "losses": lo,
                "score": None if score is None else round(score, 4),
                "performance": perf,
                "anchor": opp.name in anchors,
                "elo_error": anchors[opp.name].error if opp.name in anchors else None,
            }
        )
        fit_games += [(float(opp.elo), r.score_of(0)) for r in games]
    fit = fit_absolute(fit_games)
    w, d, lo = wdl(records, 0)
    return {
        "kind": "ladder",
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "engine": engine.to_dict(),
        "games": len(records),
        "wins": w,
        "draws": d,
        "losses": lo,
        "levels": levels,
        "fit": fit.to_dict(),
        "fit_method": "maximum likelihood, logistic Elo model, draws as half points; stderr from the Fisher "
        "information, lower/upper: 95% profile-likelihood interval",
        "scale": "Stockfish UCI_Elo (engine Elo calibrated at 120+1 against CCRL engines)",
        "notes": [n for o in opponents for n in o.notes],
        "terminations": terminations(records),
        "per_engine": {engine.name: engine_stats(records, 0)},
        "time_control": settings.time_control().describe(),
        "config": dataclasses.asdict(settings),
        **extra,
    }


def run_ladder(engine: EngineSpec, settings: PlaySettings, opts: LadderOptions) -> dict[str, Any]:
    if opts.games < 1:
        raise ArenaError("games per level must be >= 1")
    if not opts.levels and not opts.anchors:
        raise ArenaError("a ladder needs at least one Stockfish level or anchor")
    opponents = [parse_engine([f"stockfish:{lv}"], stockfish_path=opts.stockfish) for lv in opts.levels]
    seen: dict[str, int] = {}
    for o in opponents:
        if o.name in seen:
            raise ArenaError(
                f"levels {opts.levels[seen[o.name]]} and {o.requested_elo} both play as {o.name}: drop one"
            )
        seen[o.name] = opponents.index(o)
    anchors: dict[str, Anchor] = {}
    if opts.anchors:
        anchors_file = opts.anchors_file or ANCHORS_FILE
        table = load_anchors(anchors_file)
        for name in opts.anchors:
            if name not in table:
                raise ArenaError(f"unknown anchor {name!r} (anchors in {anchors_file}: {', '.join(sorted(table))})")
            if name in anchors or name in seen:
                raise ArenaError(f"anchor {name!r} given twice")
            a = table[name]
            spec = parse_engine(a.engine, stockfish_path=opts.stockfish)
            spec.name, spec.elo, spec.requested_elo = a.name, round(a.elo), None
            spec.notes.append(
                f"anchor {a.name}: Elo {a.elo:.0f} +/- {a.error:.0f} (95%, {a.calibration or 'calibration not given'}); "
                "the fit takes it as exact"
            )
            anchors[name] = a
            opponents.append(spec)
    specs = [engine, *opponents]
    openings, play_order = settings.suite()
    tasks = ladder_schedule(len(opponents), opts.games, play_order)
    # The schedule's name, not the games per level: a game's place does not depend on them
    # (logs of the earlier schedule, which named games_per_level, are refused as another run's).
    identity = run_identity("ladder", specs, settings, openings, schedule=INTERLEAVED_NUMBERING)
    event = "mistral-chess arena ladder"
    log, pgn, done, files = open_run_outputs(identity, opts, tasks, event)

    def on_record(records: list[GameRecord]) -> None:
        if opts.json:
            write_json(
                ladder_report(engine, opponents, settings, records, anchors, interrupted=False, files=files), opts.json
            )

    def progress(records: list[GameRecord]) -> str:
        fit = fit_absolute(
            [
                (
                    float(specs[r.black_engine if r.white_engine == 0 else r.white_engine].elo or 0),
                    r.score_of(0),
                )
                for r in records
            ]
        )
        elo = f"Elo {fit.elo:.0f}" if fit.elo is not None else (f"Elo < {fit.upper:.0f}" if fit.upper else "")
        return f"{score_text(records)} {elo}"

    runner = Runner(
        specs,
        settings,
        openings,
        event=event,
        log=log,
        pgn=pgn,
        on_record=on_record,
        progress_text=progress,
        show_progress=opts.show_progress,
    )
    result = runner.run(tasks, done)
    report = ladder_report(
        engine,
        opponents,
        settings,
        result.records,
        anchors,
        interrupted=result.interrupted,
        files=files,
        games_planned=len(tasks),
    )
    report["per_engine"][engine.name]["restarts"] = result.restarts.get(0, 0)
    if opts.json:
        write_json(report, opts.json)
    plot = files.get("plot", "")
    if plot and result.records:
        from arena.plots import ladder_plot

        ladder_plot(report, plot)
    return report


def print_ladder(report: dict[str, Any]) -> None:
    name = report["engine"]["name"]
    print(f"Ladder of {name}: {report['games']} games")
    for lv in report["levels"]:
        score = "-" if lv["score"] is None else f"{100 * lv['score']:.1f}%"
        perf = "" if lv["performance"] is None else f", performance {lv['performance']:.0f}"
        anchor = f" (anchor, Elo {lv['elo']} +/- {lv['elo_error']:.0f})" if lv.get("anchor") else ""
        print(f"  vs {lv['name']}{anchor}: +{lv['wins']} ={lv['draws']} -{lv['losses']} ({score}{perf})")
    fit = report["fit"]
    if fit["elo"] is not None:
        print(
            f"Elo {fit['elo']:.0f} +/- {1.96 * fit['stderr']:.0f} (95% profile interval {fit['lower']:.0f} .. "
            f"{fit['upper']:.0f}), on Stockfish's UCI_Elo scale"
        )
    elif fit["upper"] is not None:
        print(f"Elo below {fit['upper']:.0f} (95%): no game scored a point, so no finite estimate")
    elif fit["lower"] is not None:
        print(f"Elo above {fit['lower']:.0f} (95%): every game won, so no finite estimate")
    for note in report["notes"]:
        print(f"note: {note}")
    if report.get("files", {}).get("plot"):
        print(f"plot: {report['files']['plot']}")
