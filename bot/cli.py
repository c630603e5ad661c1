"""``mistral-chess bot`` and ``mistral-chess bot upgrade``."""

from __future__ import annotations

import argparse
import functools
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:  # berserk is imported only when the bot runs: keeps `mistral-chess --help` light
    from bot.client import Redactor


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bot",
        help="play on Lichess as a bot (token from LICHESS_BOT_TOKEN or token_file)",
        description="Play on Lichess (or any server speaking its Bot API) with the model. "
        "`mistral-chess bot upgrade` turns the account into a bot account.",
    )
    p.add_argument("--config", help="bot YAML config (see configs/bot.yaml)")
    p.add_argument("--base-url", help="server base URL (overrides `url`, default https://lichess.org)")
    p.add_argument(
        "--max-games", type=int, default=0, help="stop after this many finished games (0: run until stopped)"
    )
    p.add_argument("--yes", action="store_true", help="upgrade: do not ask for confirmation")
    p.add_argument(
        "words",
        nargs="*",
        metavar="[upgrade] key=value",
        help="`upgrade` to turn the account into a bot account; config overrides key=value, "
        "e.g. challenge.concurrency=2",
    )
    p.set_defaults(func=run_cli)


def _configure_logging(level: str, log_file: str, redactor: Redactor) -> None:
    logger.remove()
    logger.configure(patcher=redactor.patch_record)  # type: ignore[arg-type]
    # diagnose=False: tracebacks must not print local variables (the token is one).
    if log_file:
        logger.add(
            log_file, level=level.upper(), enqueue=True, diagnose=False, rotation="50 MB", retention=10
        )
    logger.add(
        sys.stderr,
        level=level.upper(),
        diagnose=False,
        format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level} {message}",
    )


def run_cli(args: argparse.Namespace) -> int:
    from bot.client import LichessClient
    from bot.config import load_bot_config, resolve_token
    from bot.errors import BotError

    words: list[str] = list(args.words or [])
    action = "run"
    if words and "=" not in words[0]:
        action = words.pop(0)
        if action not in ("run", "upgrade"):
            raise BotError(f"unknown action {action!r}: use `mistral-chess bot [upgrade] [key=value ...]`")
    overrides = words
    if args.base_url:
        overrides.append(f"url={args.base_url}")
    cfg = load_bot_config(args.config, overrides)
    token = resolve_token(cfg)
    from bot.client import Redactor

    redactor = Redactor(token)
    _configure_logging(cfg.log_level, cfg.log_file, redactor)
    stop = threading.Event()
    client = LichessClient(token, cfg.url, cfg.network, stop=stop, redactor=redactor)
    if action == "upgrade":
        return _upgrade(client, assume_yes=args.yes)
    return _run(cfg, client, stop, max_games=args.max_games)


def _run(cfg: Any, client: Any, stop: threading.Event, *, max_games: int) -> int:
    from bot.bot import Bot
    from engine.uci import load_scorer

    bot = Bot(cfg, client, stop=stop, max_games=max_games)

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("signal {}: stopping (games in progress resume on the next start)", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # one model for all games: the scorer sized for them (cache slots, pipelined batches)
    bot.prepare(functools.partial(load_scorer, games=cfg.challenge.concurrency))
    bot.run()
    return 0


def _upgrade(client: Any, *, assume_yes: bool) -> int:
    from bot.errors import AccountError

    client.test_token()
    profile = client.account()
    name = str(profile.get("username") or profile.get("id"))
    if profile.get("title") == "BOT":
        print(f"{name} is already a bot account.")
        return 0
    if not assume_yes:
        print(
            f"This turns the Lichess account {name} into a BOT account. It cannot be undone: the account will only "
            "be able to play through the Bot API, and it must not have played any game."
        )
        try:
            typed = input(f"Type the account name ({name}) to confirm: ").strip()
        except EOFError:
            typed = ""
        if typed.lower() != name.lower():
            raise AccountError(f"not confirmed (typed {typed!r}, expected {name!r}); nothing changed")
    client.upgrade_to_bot()
    print(f"{name} is now a bot account.")
    return 0
