"""``mistral-chess arena match|ladder|tournament|openings`` and ``mistral-chess demo``.

Play settings come from dataclass defaults < ``--config FILE`` (YAML keys of
:class:`arena.match.PlaySettings`) < flags. Heavy modules are imported inside the
handlers so ``mistral-chess --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from engine.errors import ConfigError

# flag dest -> PlaySettings key
_SETTING_FLAGS = {
    "tc": "tc",
    "movetime": "movetime_ms",
    "nodes": "nodes",
    "depth": "depth",
    "concurrency": "concurrency",
    "max_plies": "max_plies",
    "openings": "openings",
    "opening_seed": "opening_seed",
    "time_margin": "time_margin_ms",
    "stall_timeout": "stall_timeout_s",
    "start_timeout": "start_timeout_s",
    "engine_logs": "engine_logs",
}


def register(sub: Any) -> None:
    arena = sub.add_parser(
        "arena",
        help="matches, an Elo ladder against Stockfish, tournaments and SPRT",
        description="Play engines against each other and measure Elo (see docs/arena.md).",
    )
    asub = arena.add_subparsers(dest="arena_command", metavar="ARENA_COMMAND")
    arena.set_defaults(func=lambda args: _help(arena))

    m = asub.add_parser("match", help="two engines, many games, Elo difference", description=_ENGINE_HELP)
    _engine_args(m, minimum=2)
    m.add_argument(
        "--games",
        type=int,
        default=None,
        help="games to play (default 2; even: each opening with both colours)",
    )
    m.add_argument(
        "--sprt", metavar="'elo0=0 elo1=5 alpha=0.05 beta=0.05'", help="stop early when the SPRT decides"
    )
    _play_args(m)
    _output_args(m)
    m.set_defaults(func=_match)

    lad = asub.add_parser(
        "ladder", help="one engine against Stockfish at several UCI_Elo levels: absolute Elo"
    )
    lad.add_argument(
        "--engine",
        nargs="+",
        action="append",
        required=True,
        metavar="SPEC",
        help="the engine to rate (mistral:DIR, a command line, ...)",
    )
    lad.add_argument(
        "--levels", default="1320,1500,1700,2000", help="Stockfish UCI_Elo levels (comma-separated)"
    )
    lad.add_argument(
        "--anchor",
        action="append",
        default=[],
        metavar="NAME",
        help="also play this calibrated anchor, an engine below Stockfish's weakest level, with its Elo from "
        "--anchors-file (repeatable; see docs/arena.md)",
    )
    lad.add_argument("--anchors-file", help="YAML of calibrated anchors (default: arena/data/anchors.yaml)")
    lad.add_argument("--games", type=int, default=None, help="games per level and per anchor (default 10)")
    lad.add_argument("--plot", help="PNG plot (default: beside --json)")
    lad.add_argument(
        "--stockfish", help="Stockfish binary (default: $STOCKFISH_PATH, PATH, /usr/games/stockfish)"
    )
    _play_args(lad)
    _output_args(lad)
    lad.set_defaults(func=_ladder)

    t = asub.add_parser("tournament", help="round robin among engines or training checkpoints; Elo table")
    t.add_argument(
        "--engine", nargs="+", action="append", default=[], metavar="SPEC", help="an engine (repeat)"
    )
    t.add_argument(
        "--checkpoints",
        metavar="RUN_DIR",
        help="a training run folder: every checkpoint in it (adapter or model folder) plays as mistral:DIR",
    )
    t.add_argument(
        "--checkpoint-options",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="words added to every checkpoint engine (e.g. model.threads=1 search.mode=generate)",
    )
    t.add_argument("--games", type=int, default=None, help="games per pairing (default 2)")
    t.add_argument(
        "--anchor",
        help="the engine whose rating is fixed (default: the first); a Stockfish level "
        "is anchored at its UCI_Elo",
    )
    t.add_argument(
        "--anchor-elo", type=float, default=None, help="the anchor's rating (default 0, or its UCI_Elo)"
    )
    t.add_argument(
        "--sprt",
        metavar="'elo0=0 elo1=5 alpha=0.05 beta=0.05'",
        help="two engines only: a match that stops when the SPRT decides",
    )
    t.add_argument("--plot", help="PNG plot of the ratings (default: beside --json)")
    t.add_argument("--stockfish", help="Stockfish binary")
    _play_args(t)
    _output_args(t)
    t.set_defaults(func=_tournament)

    o = asub.add_parser(
        "openings", help="show the opening suite; --evaluate checks its balance with Stockfish"
    )
    o.add_argument("--openings", help="a PGN/EPD suite (default: the bundled one)")
    o.add_argument("--evaluate", action="store_true", help="evaluate every line with Stockfish")
    o.add_argument("--depth", type=int, default=18)
    o.add_argument("--stockfish", help="Stockfish binary")
    o.set_defaults(func=_openings)

    d = sub.add_parser(
        "demo",
        help="one short game: the engine on the bundled model (else a tiny random one) vs Stockfish",
        description="Plays one short adjudicated game between the project's engine and Stockfish at its "
        "lowest UCI_Elo, printing each move and the PGN. Without a bundled model the engine runs a tiny "
        "RANDOM-WEIGHT model: this shows the plumbing, not chess strength.",
    )
    d.add_argument("--model", help="model folder (default: the bundled model, else a tiny random one)")
    d.add_argument("--max-plies", type=int, default=40)
    d.add_argument("--stockfish", help="Stockfish binary")
    d.add_argument("--pgn", help="also write the game to this PGN file")
    d.set_defaults(func=_demo)


_ENGINE_HELP = """Engines: --engine SPEC [KEY=VALUE ...], once per engine.
  mistral:DIR            the project's engine on a model / adapter folder or an engine YAML config
                         (keys: adapter=DIR config=FILE and engine overrides like search.mode=generate)
  stockfish:ELO          Stockfish with UCI_LimitStrength and UCI_Elo (clamped to what it accepts)
  stockfish              Stockfish at full strength
  "PROGRAM ARGS"         any UCI engine command line (or cmd=PROGRAM)
  every engine: name=NAME option.NAME=VALUE arg=ARG cwd=DIR tc=10+0.1 movetime=MS nodes=N depth=N"""


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _engine_args(p: argparse.ArgumentParser, *, minimum: int) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "--engine",
        nargs="+",
        action="append",
        default=[],
        metavar="SPEC",
        help="an engine and its KEY=VALUE words (repeat for each engine)",
    )
    p.add_argument(
        "--stockfish", help="Stockfish binary (default: $STOCKFISH_PATH, PATH, /usr/games/stockfish)"
    )


def _play_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("play settings (also YAML keys of --config)")
    g.add_argument("--config", help="YAML file of play settings (keys as in docs/arena.md)")
    g.add_argument(
        "--tc",
        help="time control: 10+0.1 (seconds+increment, the default unless --movetime, --nodes or "
        "--depth is given), 40/60 (moves/seconds), inf",
    )
    g.add_argument("--movetime", type=int, help="fixed milliseconds per move")
    g.add_argument("--nodes", type=int, help="node budget per move")
    g.add_argument("--depth", type=int, help="depth budget per move")
    g.add_argument("--concurrency", type=int, help="games played at once (default 1)")
    g.add_argument(
        "--max-plies", type=int, help="plies after the opening, then a draw by adjudication (default 200)"
    )
    g.add_argument("--openings", help="opening suite, PGN or EPD (default: the bundled balanced suite)")
    g.add_argument(
        "--opening-seed", type=int, help="shuffle the openings with this seed (default: file order)"
    )
    g.add_argument(
        "--time-margin", type=int, help="ms an engine may overrun before losing on time (default 50)"
    )
    g.add_argument(
        "--stall-timeout", type=float, help="s to wait for a move when no clock limits it (default 60)"
    )
    g.add_argument(
        "--start-timeout", type=float, help="s for an engine to start and load its model (default 120)"
    )
    g.add_argument(
        "--no-resign",
        dest="resign",
        action="store_false",
        default=None,
        help="ignore the engine's 'info string resign' and play on",
    )
    g.add_argument("--engine-logs", help="folder for each engine's UCI traffic")


def _output_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--pgn", help="PGN file of every game (with its termination)")
    g.add_argument("--json", help="JSON report")
    g.add_argument("--log", help="game log to resume from (default: beside --json, else --pgn)")
    g.add_argument("--resume", action="store_true", help="continue a stopped run from its game log")
    g.add_argument("--overwrite", action="store_true", help="replace the output of an earlier run")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def _settings(args: argparse.Namespace, **defaults: Any) -> Any:
    from arena.match import PlaySettings
    from engine.configtools import load_config

    overrides: dict[str, Any] = dict(defaults)
    for flag, key in _SETTING_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "resign", None) is not None:
        overrides["resign"] = args.resign
    try:
        return load_config(PlaySettings, args.config, overrides)
    except ConfigError as exc:
        raise ConfigError(f"play settings: {exc}") from None


def _engines(args: argparse.Namespace) -> list[Any]:
    from arena.engines import parse_engine, unique_names

    specs = [parse_engine(words, stockfish_path=args.stockfish) for words in args.engine]
    unique_names(specs)
    return specs


def _setup_logging(quiet: bool = False) -> None:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING" if quiet else "INFO", format="{time:HH:mm:ss} {level} {message}")


def _sprt(text: str | None) -> Any:
    if not text:
        return None
    from arena.errors import ArenaError
    from arena.sprt import parse_sprt

    try:
        return parse_sprt(text)
    except ValueError as exc:
        raise ArenaError(f"--sprt: {exc}") from None


def _match(args: argparse.Namespace) -> int:
    from arena.errors import ArenaError
    from arena.match import MatchOptions, run_match

    _setup_logging(args.quiet)
    if len(args.engine) != 2:
        raise ArenaError(f"arena match needs exactly two --engine, got {len(args.engine)}")
    specs = _engines(args)
    settings = _settings(args)
    for s in specs:
        for note in s.notes:
            print(f"note: {s.name}: {note}", file=sys.stderr)
    opts = MatchOptions(
        games=args.games if args.games is not None else 2,
        pgn=args.pgn or "",
        json=args.json or "",
        log=args.log or "",
        resume=args.resume,
        overwrite=args.overwrite,
        sprt=_sprt(args.sprt),
        show_progress=not args.quiet,
    )
    report = run_match(specs, settings, opts)
    print_match(report)
    return _exit_code(report)


def print_match(report: dict[str, Any]) -> None:
    from arena.report import engine_warnings

    a, b = (e["name"] for e in report["engines"])
    print(
        f"Score of {a} vs {b}: {report['wins']} - {report['losses']} - {report['draws']}"
        f"  [{_pct(report['score'])}] {report['games']} games"
    )
    elo = report["elo"]
    los_text = f", LOS {100 * report['los']:.1f}%" if report["los"] is not None else ""
    if elo["diff"] is None:
        print(f"Elo difference: infinite (score {_pct(report['score'])}){los_text}")
    else:
        lower = "-inf" if elo["lower"] is None else f"{elo['lower']:+.1f}"
        upper = "+inf" if elo["upper"] is None else f"{elo['upper']:+.1f}"
        error = f" +/- {elo['error']:.1f}" if elo["error"] is not None else ""
        print(f"Elo difference: {elo['diff']:+.1f}{error} (95%: {lower} .. {upper}){los_text}")
    if report.get("sprt"):
        s = report["sprt"]
        print(
            f"SPRT [{s['elo0']:g}, {s['elo1']:g}] LLR {s['llr']:.2f} ({s['lower']:.2f}, {s['upper']:.2f}): "
            f"{s['decision'] or 'undecided'}"
        )
    print("Terminations: " + ", ".join(f"{k} {v}" for k, v in report["terminations"].items()))
    for name, st in report["per_engine"].items():
        mt = st["move_time_ms"]
        print(
            f"  {name}: illegal {st['illegal_moves']}, time losses {st['time_losses']}, crashes {st['crashes']}, "
            f"stalls {st['stalls']}, resignations {st['resignations']}, fallbacks {st['fallbacks']}, "
            f"invalid outputs {st['invalid_outputs']}, "
            + (f"guard changes {st['guard_changes']}, " if st.get("guard_changes") else "")
            + f"move time median {mt['median']} ms p95 {mt['p95']} ms"
        )
    for warning in engine_warnings(report["per_engine"]):
        print(f"WARNING: {warning}")


def _pct(score: float | None) -> str:
    return "-" if score is None else f"{100 * score:.1f}%"


def _ladder(args: argparse.Namespace) -> int:
    from arena.errors import ArenaError
    from arena.ladder import LadderOptions, run_ladder

    _setup_logging(args.quiet)
    if len(args.engine) != 1:
        raise ArenaError("arena ladder rates one engine: give --engine once")
    try:
        levels = [int(x) for x in args.levels.replace(" ", "").split(",") if x]
    except ValueError:
        raise ArenaError(
            f"--levels {args.levels!r}: comma-separated integers, e.g. 1320,1500,1700,2000"
        ) from None
    if not levels and not args.anchor:
        raise ArenaError("--levels: at least one level (or an --anchor)")
    specs = _engines(args)
    settings = _settings(args)
    opts = LadderOptions(
        levels=levels,
        anchors=list(args.anchor),
        anchors_file=args.anchors_file or "",
        games=args.games if args.games is not None else 10,
        pgn=args.pgn or "",
        json=args.json or "",
        log=args.log or "",
        plot=args.plot or "",
        resume=args.resume,
        overwrite=args.overwrite,
        show_progress=not args.quiet,
        stockfish=args.stockfish,
    )
    report = run_ladder(specs[0], settings, opts)
    from arena.ladder import print_ladder

    print_ladder(report)
    return _exit_code(report)


def _exit_code(report: dict[str, Any]) -> int:
    """130 (and how to go on) for a run stopped by Ctrl-C or SIGTERM, else 0."""
    if not report["interrupted"]:
        return 0
    kept = f"{report['games']} finished games" if "games" in report else "finished games"
    print(f"interrupted: {kept} kept; run the same command with --resume to go on", file=sys.stderr)
    return 130


def _tournament(args: argparse.Namespace) -> int:
    from arena.errors import ArenaError
    from arena.tournament import TournamentOptions, checkpoint_engines, print_tournament, run_tournament

    _setup_logging(args.quiet)
    specs = _engines(args) if args.engine else []
    if args.checkpoints:
        specs += checkpoint_engines(args.checkpoints, list(args.checkpoint_options))
    from arena.engines import unique_names

    unique_names(specs)
    if len(specs) < 2:
        raise ArenaError(
            "a tournament needs at least two engines (--engine ... and/or --checkpoints RUN_DIR)"
        )
    settings = _settings(args)
    sprt = _sprt(args.sprt)
    if sprt is not None:
        if len(specs) != 2:
            raise ArenaError(f"--sprt compares two engines, not {len(specs)}")
        from arena.match import MatchOptions, run_match

        report = run_match(
            specs,
            settings,
            MatchOptions(
                games=args.games if args.games is not None else 20000,
                pgn=args.pgn or "",
                json=args.json or "",
                log=args.log or "",
                resume=args.resume,
                overwrite=args.overwrite,
                sprt=sprt,
                show_progress=not args.quiet,
                event="mistral-chess arena SPRT",
            ),
        )
        print_match(report)
        return _exit_code(report)
    opts = TournamentOptions(
        games=args.games if args.games is not None else 2,
        anchor=args.anchor or "",
        anchor_elo=args.anchor_elo,
        pgn=args.pgn or "",
        json=args.json or "",
        log=args.log or "",
        plot=args.plot or "",
        resume=args.resume,
        overwrite=args.overwrite,
        show_progress=not args.quiet,
    )
    report = run_tournament(specs, settings, opts)
    print_tournament(report)
    return _exit_code(report)


def _openings(args: argparse.Namespace) -> int:
    from arena.engines import find_stockfish
    from arena.openings import check_suite, evaluate, load_openings

    suite = load_openings(args.openings)
    problems = check_suite(suite)
    scores = evaluate(suite, find_stockfish(args.stockfish), depth=args.depth) if args.evaluate else None
    for i, o in enumerate(suite):
        now = f" now {scores[i]:+d}" if scores else ""
        stored = f"{o.eval_cp:+d}" if o.eval_cp is not None else "?"
        print(f"{i + 1:3d} {o.eco:3s} {stored:>5s}{now}  {o.name}: {' '.join(o.sans())}")
    print(
        f"{len(suite)} openings, {len({o.key() for o in suite})} distinct positions, "
        f"{min(len(o.moves) for o in suite)}-{max(len(o.moves) for o in suite)} plies"
    )
    if scores:
        worst = max(abs(s) for s in scores)
        print(f"Stockfish depth {args.depth}: |eval| <= {worst} cp, mean {sum(scores) / len(scores):+.1f} cp")
    for p in problems:
        print(f"problem: {p}")
    return 1 if problems else 0


def _demo(args: argparse.Namespace) -> int:
    from arena.demo import run_demo

    return run_demo(model=args.model, max_plies=args.max_plies, stockfish=args.stockfish, pgn=args.pgn)
