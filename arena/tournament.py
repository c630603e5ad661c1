"""Round robin among engines or the checkpoints of a training run.

Every pair of engines plays ``games`` games (opening pairs, colours swapped), one
pairing after the other so a worker keeps just the two engines of its game loaded.
Ratings are fitted by maximum likelihood over all games
(:func:`arena.elo.fit_ratings`), with one engine as the anchor: a Stockfish level
at its ``UCI_Elo`` when there is one, else the first engine at 0. When some engine
won or lost every game the plain fit has no finite answer; the fit is then redone
with one virtual draw per pairing and the report says so.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import re
from pathlib import Path
from typing import Any

from arena.elo import Z95, fit_ratings
from arena.engines import EngineSpec, is_model_folder, parse_engine
from arena.errors import ArenaError, EngineSpecError
from arena.match import (
    INTERLEAVED_NUMBERING,
    PlaySettings,
    Runner,
    interleaved_schedule,
    open_run_outputs,
    run_identity,
    warn_repeated_openings,
)
from arena.referee import GameRecord, GameTask
from arena.report import engine_stats, head_to_head, terminations, wdl, write_json

_STEP_RE = re.compile(r"(\d+)$")


@dataclasses.dataclass
class TournamentOptions:
    games: int = 2  # per pairing
    anchor: str = ""  # engine name; "" = a Stockfish level if any, else the first engine
    anchor_elo: float | None = None
    pgn: str = ""
    json: str = ""
    log: str = ""
    plot: str = ""
    resume: bool = False
    overwrite: bool = False
    show_progress: bool = True


def checkpoint_engines(run_dir: str, extra_words: list[str]) -> list[EngineSpec]:
    """One ``mistral:`` engine per checkpoint folder of a training run, by step."""
    root = Path(run_dir)
    if not root.is_dir():
        raise EngineSpecError(f"--checkpoints: {run_dir!r} is not a folder")
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and is_model_folder(p)]
    if is_model_folder(root):
        folders.append(root)  # the final model saved at the top of the run
    if not folders:
        raise EngineSpecError(
            f"--checkpoints: no checkpoint in {run_dir!r} (looked for sub-folders with adapter_config.json or config.json)"
        )

    def step(p: Path) -> tuple[int, str]:
        m = _STEP_RE.search(p.name)
        return (int(m.group(1)) if m else 1 << 62, p.name)

    specs = []
    for p in sorted(folders, key=step):
        name = p.name if p != root else f"{p.name}(final)"
        spec = parse_engine([f"mistral:{p}", f"name={name}", *extra_words])
        specs.append(spec)
    return specs


def round_robin(n: int, games: int, opening_order: list[int]) -> list[GameTask]:
    """Every pairing of ``n`` engines, ``games`` games each, played one pairing after another (a
    worker holds only its game's two engines, so a folder of 7B checkpoints is not loaded all at
    once, and each engine starts once a pairing, not once an opening pair). Indices and pair ids
    are those of :func:`arena.match.interleaved_schedule`, which do not depend on ``games``, so
    ``--resume`` may raise it: the games it adds are played pairing after pairing too."""
    pairings = list(itertools.combinations(range(n), 2))
    tasks = interleaved_schedule(pairings, games, opening_order)
    return sorted(tasks, key=lambda t: (t.pair % len(pairings), t.index))


def _anchor(specs: list[EngineSpec], opts: TournamentOptions) -> tuple[int, float]:
    if opts.anchor:
        names = [s.name for s in specs]
        if opts.anchor not in names:
            raise ArenaError(
                f"--anchor {opts.anchor!r} is not an engine of this tournament ({', '.join(names)})"
            )
        idx = names.index(opts.anchor)
    else:
        levels = [i for i, s in enumerate(specs) if s.elo is not None]
        idx = levels[0] if levels else 0
    elo = opts.anchor_elo if opts.anchor_elo is not None else float(specs[idx].elo or 0)
    return idx, elo


def tournament_report(
    specs: list[EngineSpec],
    settings: PlaySettings,
    opts: TournamentOptions,
    records: list[GameRecord],
    **extra: Any,
) -> dict[str, Any]:
    n = len(specs)
    anchor, anchor_elo = _anchor(specs, opts)
    games = [(r.white_engine, r.black_engine, r.score_of(r.white_engine)) for r in records]
    fit = fit_ratings(n, games, anchor=anchor, anchor_elo=anchor_elo)
    notes = []
    if not fit.converged:
        fit = fit_ratings(n, games, anchor=anchor, anchor_elo=anchor_elo, prior_draws=1.0)
        notes.append(
            "some engine won or lost every game, so the plain maximum-likelihood ratings are infinite: "
            "fitted with one virtual draw added to every pairing"
        )
    rows = []
    for i, s in enumerate(specs):
        w, d, lo = wdl(records, i)
        played = w + d + lo
        se = fit.stderr[i]
        m = _STEP_RE.search(s.name)
        rows.append(
            {
                "name": s.name,
                "elo": round(fit.ratings[i], 1) if played or i == anchor else None,
                "error": None if se is None or not played else round(Z95 * se, 1),
                "stderr": None if se is None or not played else round(se, 1),
                "games": played,
                "wins": w,
                "draws": d,
                "losses": lo,
                "score": round((w + 0.5 * d) / played, 4) if played else None,
                "step": int(m.group(1)) if m and s.kind == "mistral" else None,
            }
        )
    cross: dict[str, dict[str, Any]] = {}
    for i, j in itertools.permutations(range(n), 2):
        h = head_to_head(records, i, j)
        if h["games"]:
            cross.setdefault(specs[i].name, {})[specs[j].name] = {
                "wins": h["wins"],
                "draws": h["draws"],
                "losses": h["losses"],
                "score": h["score"],
                "repeated_games": h["repeated_games"],
                "distinct": h["distinct"],
            }
    return {
        "kind": "tournament",
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "engines": [s.to_dict() for s in specs],
        "games": len(records),
        "games_per_pairing": opts.games,
        "anchor": {"name": specs[anchor].name, "elo": anchor_elo},
        "ratings": sorted(rows, key=lambda r: -(r["elo"] if r["elo"] is not None else -1e9)),
        "fit_method": "maximum likelihood (logistic Elo, draws as half points); error: 1.96 x stderr from the "
        "inverse Fisher information, relative to the anchor",
        "fit_notes": notes,
        "cross_table": cross,
        "terminations": terminations(records),
        "per_engine": {s.name: engine_stats(records, i) for i, s in enumerate(specs)},
        "time_control": settings.time_control().describe(),
        "config": dataclasses.asdict(settings),
        **extra,
    }


def run_tournament(
    specs: list[EngineSpec], settings: PlaySettings, opts: TournamentOptions
) -> dict[str, Any]:
    if opts.games < 1:
        raise ArenaError("games per pairing must be >= 1")
    _anchor(specs, opts)  # a bad --anchor is an error before any game
    openings, play_order = settings.suite()
    warn_repeated_openings(opts.games, len(openings))  # each pairing's games; the report's cross table counts copies
    tasks = round_robin(len(specs), opts.games, play_order)
    # The schedule's name, not the games per pairing: a game's place does not depend on them
    # (logs of the earlier schedule, which named games_per_pairing, are refused as another run's).
    identity = run_identity("tournament", specs, settings, openings, schedule=INTERLEAVED_NUMBERING)
    event = "mistral-chess arena tournament"
    log, pgn, done, files = open_run_outputs(identity, opts, tasks, event)

    def on_record(records: list[GameRecord]) -> None:
        if opts.json:
            write_json(
                tournament_report(specs, settings, opts, records, interrupted=False, files=files), opts.json
            )

    def progress(records: list[GameRecord]) -> str:
        last = records[-1]
        return f"last: {last.white} - {last.black} {last.result}"

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
    report = tournament_report(
        specs,
        settings,
        opts,
        result.records,
        interrupted=result.interrupted,
        files=files,
        games_planned=len(tasks),
    )
    for i, s in enumerate(specs):
        report["per_engine"][s.name]["restarts"] = result.restarts.get(i, 0)
    if opts.json:
        write_json(report, opts.json)
    plot = files.get("plot", "")
    if plot and result.records:
        from arena.plots import ratings_plot

        ratings_plot(report, plot)
    return report


def print_tournament(report: dict[str, Any]) -> None:
    print(
        f"Tournament: {report['games']} games; anchor {report['anchor']['name']} = {report['anchor']['elo']:g}"
    )
    width = max(len(r["name"]) for r in report["ratings"])
    print(f"  {'engine':{width}s}    Elo     +/-  games  score")
    for r in report["ratings"]:
        elo = "-" if r["elo"] is None else f"{r['elo']:7.1f}"
        err = "-" if r["error"] is None else f"{r['error']:6.1f}"
        score = "-" if r["score"] is None else f"{100 * r['score']:5.1f}%"
        print(f"  {r['name']:{width}s} {elo:>7s} {err:>7s} {r['games']:6d} {score:>6s}")
    for note in report["fit_notes"]:
        print(f"note: {note}")
    names = [r["name"] for r in report["ratings"]]
    print("Cross table (row's wins-draws-losses against column):")
    cw = max(9, width)
    print("  " + " " * width + "".join(f" {n[:cw]:>{cw}s}" for n in names))
    for a in names:
        cells = []
        for b in names:
            c = report["cross_table"].get(a, {}).get(b)
            text = "." if a == b else ("-" if c is None else "{wins}-{draws}-{losses}".format(**c))
            cells.append(f" {text:>{cw}s}")
        print(f"  {a:{width}s}" + "".join(cells))
    if report.get("files", {}).get("plot"):
        print(f"plot: {report['files']['plot']}")
