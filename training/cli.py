"""Training subcommands of ``mistral-chess``: ``dataset selfplay``, ``dataset build``,
``dataset merge``, ``dataset pack-games`` / ``unpack-games``, ``train``, ``merge``, ``grow-model`` and ``combine-models``. Heavy imports stay inside the handlers."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def configure_logging(level: str = "INFO") -> None:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=level.upper(), format="{time:HH:mm:ss} {level} {message}")


def register(sub: Any) -> None:
    d = sub.add_parser("dataset", help="make training data: Stockfish self-play games, and examples from games")
    dsub = d.add_subparsers(dest="dataset_command", metavar="ACTION")

    s = dsub.add_parser(
        "selfplay",
        help="Stockfish self-play games in the LAION parquet schema (parallel, resumable)",
        description="Play Stockfish against itself in worker processes and write LAION-schema parquet chunks. "
        "Rerunning with the same output folder resumes (finished chunks are kept, no game is duplicated).",
    )
    s.add_argument("--config", help="YAML file (SelfPlayConfig keys; see docs/training.md)")
    s.add_argument("--out", help="output folder (key: out)")
    s.add_argument("--games", type=int, help="total games wanted in the folder (key: games)")
    s.add_argument("--workers", type=int, help="Stockfish processes; default one per CPU core (key: workers)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. nodes=500 elo=2000")
    s.set_defaults(func=_selfplay)

    b = dsub.add_parser(
        "build",
        help="turn games (LAION parquet, PGN, .pgn.zst) into prompt/completion examples",
        description="Build a training data set: examples from the engine's prompt module, split by game, "
        "tokenized, written as parquet with stats.json.",
    )
    b.add_argument("--config", help="YAML file (DatasetConfig keys; see configs/dataset/)")
    b.add_argument("--source", action="append", help="a game file, folder or glob (replaces the config's sources)")
    b.add_argument("--out", help="output folder (key: out)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. examples.positions_per_game=4")
    b.set_defaults(func=_build)

    mg = dsub.add_parser(
        "merge",
        help="join data sets built in parts with the same settings into one (for the trainer's data.path)",
        description="Join built data sets into one folder: their shards (hard-linked where possible), games.keys "
        "and stats added up. The parts must share the example, split, length and players settings and the "
        "tokenizer. Build each later part with exclude=[earlier parts] so that no game is in two parts.",
    )
    mg.add_argument("parts", nargs="+", help="data set folders written by `dataset build` (two or more)")
    mg.add_argument("--out", required=True, help="the merged data set's folder")
    mg.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    mg.set_defaults(func=_merge_datasets)

    pk = dsub.add_parser(
        "pack-games",
        help="pack LAION parquet games into one small file (xz): 1.7-2.3x more games per GPU call",
    )
    pk.add_argument("sources", nargs="+", help="parquet or packed (.mcg: repacked) files, or folders of them")
    pk.add_argument("--out", required=True, help="the packed file to write (e.g. .gpu2/packed/selfplay-80.mcg)")
    pk.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    pk.add_argument(
        "--version", type=int, choices=(1, 2), default=2,
        help="2 (default): two bytes a move, decoded 3x faster; 1: a byte a move, about 27%% smaller",
    )  # fmt: skip
    pk.set_defaults(func=_pack_games)

    up = dsub.add_parser("unpack-games", help="write the games of a packed file as LAION parquet chunks again")
    up.add_argument("packed", help="a file written by pack-games")
    up.add_argument("--out", required=True, help="folder for games-*.parquet")
    up.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    up.add_argument("--chunk-games", type=int, default=500, help="games per parquet file (default 500)")
    up.set_defaults(func=_unpack_games)
    d.set_defaults(func=lambda args: (d.print_help(), 2)[1])

    t = sub.add_parser(
        "train",
        help="fine-tune (QLoRA / LoRA) or train from scratch on a built data set",
        description="Train with the config; continues from the newest checkpoint in train.output_dir. "
        "Multi-GPU: accelerate launch --config_file configs/train/accelerate/<...>.yaml -m training train ...",
    )
    t.add_argument("--config", help="YAML file (TrainConfig keys; see configs/train/)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_steps=100")
    t.set_defaults(func=_train)

    m = sub.add_parser("merge", help="merge a LoRA adapter into its base model and save the result (safetensors)")
    m.add_argument("adapter", help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    m.add_argument("out", help="output folder for the merged model")
    m.add_argument("--base", help="base model folder or hub name (default: the adapter's base_model_name_or_path)")
    m.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    m.add_argument("--device", default="cpu", help="where to merge (cpu needs RAM for the whole model)")
    m.set_defaults(func=_merge)

    g = sub.add_parser(
        "grow-model",
        help="copy a trained Mistral model with more layers that computes the same (depth up-scaling, to train further)",
        description="Each old layer is repeated in place (interleaved); the repeats' o_proj and down_proj are zero, "
        "so the grown model's logits equal the old model's until training moves them. Train it with "
        "model.init=pretrained model.path=DST.",
    )
    g.add_argument("src", help="model folder (model.safetensors or model.int8.safetensors)")
    g.add_argument("dst", help="new folder for the grown model (model.safetensors, config, tokenizer)")
    g.add_argument("--layers", type=int, required=True, help="decoder layers of the grown model (at least the source's)")
    g.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="dtype of the written weights (default float32)")
    g.set_defaults(func=_grow)

    c = sub.add_parser(
        "combine-models",
        help="combine fine-tunes of one parent without training: their average, or the parent plus each one's change",
        description="--mode average: the weighted mean of the models (a model soup; weights sum to 1, equal by default). "
        "--mode task-sum: BASE + sum of w_i * (MODEL_i - BASE) (weights 1 by default; one model with --weights 2 "
        "goes on past it along its change from BASE). The models share the "
        "architecture; int8/int4 weights are combined in float32 and stored as the first model stores them.",
    )
    c.add_argument("out", help="new folder for the combined model")
    c.add_argument("models", nargs="+", help="model folders fine-tuned from one parent (two or more for --mode average)")
    c.add_argument("--mode", default="average", choices=("average", "task-sum"))
    c.add_argument("--base", help="the parent model folder (--mode task-sum)")
    c.add_argument("--weights", help="one weight a model, comma-separated, e.g. 0.5,0.5")
    c.set_defaults(func=_combine)


def _overrides(args: argparse.Namespace, mapping: dict[str, Any]) -> list[str]:
    extra = [f"{key}={value}" for key, value in mapping.items() if value is not None]
    return extra + list(args.overrides or [])


def _selfplay(args: argparse.Namespace) -> int:
    from training.config import load_selfplay_config
    from training.selfplay import run_selfplay

    configure_logging()
    cfg = load_selfplay_config(args.config, _overrides(args, {"out": args.out, "games": args.games, "workers": args.workers}))
    manifest = run_selfplay(cfg, progress_bar=not args.no_progress)
    print(json.dumps({k: v for k, v in manifest.items() if k != "chunks"}, indent=1))
    return 0


def _build(args: argparse.Namespace) -> int:
    from training.config import load_dataset_config
    from training.dataset import build_dataset

    configure_logging()
    overrides = _overrides(args, {"out": args.out})
    if args.source:
        overrides.append("sources=" + json.dumps([{"path": p} for p in args.source]))
    cfg = load_dataset_config(args.config, overrides)
    stats = build_dataset(cfg, progress_bar=not args.no_progress)
    brief = {k: stats[k] for k in ("games", "examples", "examples_dropped_too_long", "speed")}
    print(json.dumps(brief, indent=1))
    return 0


def _merge_datasets(args: argparse.Namespace) -> int:
    from training.dataset import merge_datasets

    configure_logging()
    stats = merge_datasets(args.parts, args.out, overwrite=args.overwrite)
    brief = {k: stats[k] for k in ("games", "examples", "examples_dropped_too_long", "files")}
    print(json.dumps(brief, indent=1))
    return 0


def _pack_games(args: argparse.Namespace) -> int:
    from training.errors import DataError
    from training.packgames import pack_games

    if args.workers < 1:
        raise DataError(f"--workers must be >= 1, not {args.workers}")
    print(json.dumps(pack_games(args.sources, args.out, workers=args.workers, version=args.version), indent=1))
    return 0


def _unpack_games(args: argparse.Namespace) -> int:
    from training.errors import DataError
    from training.packgames import unpack_games

    if args.workers < 1 or args.chunk_games < 1:
        raise DataError("--workers and --chunk-games must be >= 1")
    print(json.dumps(unpack_games(args.packed, args.out, chunk_games=args.chunk_games, workers=args.workers), indent=1))
    return 0


def _train(args: argparse.Namespace) -> int:
    from training.config import load_train_config
    from training.trainer import train

    cfg = load_train_config(args.config, list(args.overrides or []))
    configure_logging(cfg.log_level)
    summary = train(cfg)
    print(json.dumps(summary, indent=1))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from training.merge import merge_adapter

    configure_logging()
    out = merge_adapter(args.adapter, args.out, base=args.base, dtype=args.dtype, device=args.device)
    print(out)
    return 0


def _combine(args: argparse.Namespace) -> int:
    from training.errors import TrainingError
    from training.soup import combine_models

    configure_logging()
    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise TrainingError(f"--weights {args.weights!r}: give numbers separated by commas, e.g. 0.5,0.5") from None
    recipe = combine_models(args.models, args.out, mode=args.mode, base=args.base, weights=weights)
    print(json.dumps(recipe, indent=1))
    return 0


def _grow(args: argparse.Namespace) -> int:
    from training.grow import grow_depth, parameter_count

    configure_logging()
    before = parameter_count(args.src)
    out = grow_depth(args.src, args.dst, args.layers, dtype=args.dtype)
    after = parameter_count(out)
    print(f"{out}: {args.layers} layers, {after:,} parameters (from {before:,}); computes what {args.src} does")
    return 0
