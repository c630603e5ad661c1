"""Engine subcommands: ``uci``, ``serve``, ``export-int8``, ``make-tiny-model``."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    from engine import uci

    p = sub.add_parser("uci", help="run the UCI engine on stdin/stdout (for GUIs and tournament managers)")
    uci.add_arguments(p)
    p.set_defaults(func=uci.run_uci)

    s = sub.add_parser(
        "serve",
        help="serve one model to many engine processes over a Unix socket (engines set model.server=SOCKET)",
    )
    uci.add_arguments(s)
    s.add_argument("--socket", required=True, help="Unix socket path to listen on")
    s.add_argument("--games", type=int, default=16,
                   help="concurrent games to size the KV caches and batches for (default 16)")
    s.set_defaults(func=_serve)

    e = sub.add_parser(
        "export-int8",
        help="copy a model folder with its weights stored as int8, a scale per 64 weights of a row (about half the size of bf16)",
    )
    e.add_argument("src", help="model folder with model.safetensors")
    e.add_argument("dst", help="new folder (model.int8.safetensors and the other files)")
    e.add_argument("--group", type=int, default=64,
                   help="weights per scale along a row (default 64, measured level with bf16 on the bundled model); "
                   "0: one scale per row (smaller, measured 23 Elo weaker)")
    e.add_argument("--int4", default="", metavar="MODULES",
                   help="comma-separated module names (gate_proj,up_proj,down_proj) whose weights are stored in 4 bits; "
                   "for a model trained for it (qat.int4_modules): plain rounding to 4 bits costs strength")
    e.add_argument("--int4-group", type=int, default=32, help="weights per float16 scale of the 4-bit weights (default 32)")
    e.set_defaults(func=_export_int8)

    t = sub.add_parser(
        "make-tiny-model",
        help="write a small random-weight Mistral model with the real Mistral tokenizer (tests, demos)",
    )
    t.add_argument("folder", help="output folder")
    t.add_argument("--hidden-size", type=int, default=64)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_make_tiny)


def _serve(args: argparse.Namespace) -> int:
    import sys

    from engine import uci
    from engine.errors import ConfigError
    from engine.server import ScorerServer
    from engine.signals import sigterm_as_interrupt

    if args.games < 1:
        raise ConfigError(f"--games must be >= 1, not {args.games}")
    config = uci.build_config(args.config, args.model, args.adapter, list(args.overrides or []))
    if config.model.server:
        raise ConfigError("model.server names a server to ask; `serve` loads a model itself (leave it empty)")
    uci.configure_logging(config.log_level, config.log_file)
    scorer = uci.load_scorer(config, games=args.games)
    if args.games > 1:
        scorer.warmup(max_games=args.games)  # the batched steps' CUDA graphs (a no-op on a CPU)
    server = ScorerServer(scorer, args.socket, source=config.model.path or "the bundled model")

    # Each torch call of the batch leader gives up the interpreter lock; with Python's
    # default 5 ms switch interval taking it back from the connections' threads can cost
    # that much each time (docs/fastpath.md). The benchmarks ran the server at 0.5 ms.
    sys.setswitchinterval(0.0005)
    print(f"mistral-chess serve: listening on {args.socket} (engines: model.server={args.socket})", flush=True)
    try:
        with sigterm_as_interrupt():  # a scheduler's stop closes the server as Ctrl-C does
            server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def _export_int8(args: argparse.Namespace) -> int:
    from engine.errors import ModelLoadError
    from engine.int8store import export_int8

    try:
        if args.group < 0:
            raise ValueError(f"--group must be >= 0, not {args.group}")
        if args.int4_group < 2 or args.int4_group % 2:
            raise ValueError(f"--int4-group must be an even number >= 2, not {args.int4_group}")
        modules = [m.strip() for m in args.int4.split(",") if m.strip()]
        out = export_int8(args.src, args.dst, group=args.group, int4_modules=modules, int4_group=args.int4_group)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"export-int8: {exc}") from None
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _make_tiny(args: argparse.Namespace) -> int:
    from engine.tiny import make_tiny_mistral

    folder = make_tiny_mistral(args.folder, hidden_size=args.hidden_size, num_layers=args.layers, seed=args.seed)
    print(folder)
    return 0
