"""The Elo ladder: one engine against Stockfish at several ``UCI_Elo`` levels.

Every level is played with the same opening pairs, interleaved (a pair at each level,
then the next pair), so a stopped ladder still has games at every level. The
engine's absolute Elo is the maximum-likelihood fit over all games
(:func:`arena.elo.fit_absolute`), on Stockfish's ``UCI_Elo`` scale (calibrated by
its authors against CCRL-rated engines at 120+1: engine Elo, not Lichess or FIDE).
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from arena.elo import fit_absolute, score_to_elo
from arena.engines import EngineSpec, parse_engine
from arena.errors import ArenaError
from arena.match import PlaySettings, Runner, open_run_outputs, paired_schedule, run_identity, score_text
from arena.referee import GameRecord, GameTask
from arena.report import engine_stats, terminations, wdl, write_json

DEFAULT_LEVELS = (1320, 1500, 1700, 2000)


@dataclasses.dataclass
class LadderOptions:
    levels: list[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_LEVELS))
    games: int = 10  # per level
    pgn: str = ""
    json: str = ""
    log: str = ""
    plot: str = ""  # "" = beside the JSON report
    resume: bool = False
    overwrite: bool = False
    show_progress: bool = True
    stockfish: str | None = None


def ladder_schedule(n_levels: int, games: int, opening_order: list[int]) -> list[GameTask]:
    """Engine 0 against engines 1..n_levels, interleaved by opening pair."""
    per_level = [
        paired_schedule(0, k + 1, games, opening_order, start_index=0, start_pair=k * ((games + 1) // 2))
        for k in range(n_levels)
    ]
    tasks: list[GameTask] = []
    for g in range(0, games, 2):
        for level in per_level:
            tasks.extend(level[g : g + 2])
    return [dataclasses.replace(t, index=i) for i, t in enumerate(tasks)]


def ladder_report(
    engine: EngineSpec,
    opponents: list[EngineSpec],
    settings: PlaySettings,
    records: list[GameRecord],
    **extra: Any,
) -> dict[str, Any]:
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
    opponents = [parse_engine([f"stockfish:{lv}"], stockfish_path=opts.stockfish) for lv in opts.levels]
    seen: dict[str, int] = {}
    for o in opponents:
        if o.name in seen:
            raise ArenaError(
                f"levels {opts.levels[seen[o.name]]} and {o.requested_elo} both play as {o.name}: drop one"
            )
        seen[o.name] = opponents.index(o)
    specs = [engine, *opponents]
    openings, play_order = settings.suite()
    tasks = ladder_schedule(len(opponents), opts.games, play_order)
    identity = run_identity("ladder", specs, settings, openings, games_per_level=opts.games)
    event = "mistral-chess arena ladder"
    log, pgn, done, files = open_run_outputs(identity, opts, len(tasks), event)

    def on_record(records: list[GameRecord]) -> None:
        if opts.json:
            write_json(
                ladder_report(engine, opponents, settings, records, interrupted=False, files=files), opts.json
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
        print(f"  vs {lv['name']}: +{lv['wins']} ={lv['draws']} -{lv['losses']} ({score}{perf})")
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
