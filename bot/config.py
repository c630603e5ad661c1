"""The bot's configuration: typed dataclasses read from YAML (``configs/bot.yaml``).

Key names follow lichess-bot's ``config.yml`` where the concept is the same
(``challenge.concurrency``, ``accept_bot``, ``min_base``, ``time_controls``,
``greeting.hello``, ``matchmaking.allow_matchmaking``, ``move_overhead``,
``abort_time``, ``pgn_directory``), so a bot owner's habits carry over. Times under
``network`` are seconds and exist so tests can shrink every wait.

The token is never a config key: it comes from the environment (``token_env``) or a
file (``token_file``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from bot.errors import TokenError
from engine.config import EngineConfig
from engine.configtools import build_dataclass, deep_merge, parse_overrides, read_yaml
from engine.errors import ConfigError

# Lichess speeds from fastest to slowest; the bot plays clock games only (no
# correspondence), and Lichess lets no bot play ultraBullet.
SPEEDS = ("ultraBullet", "bullet", "blitz", "rapid", "classical", "correspondence")
PLAYABLE_SPEEDS = ("bullet", "blitz", "rapid", "classical")
PLAYABLE_VARIANTS = ("standard", "fromPosition")


@dataclasses.dataclass
class ChallengeConfig:
    """Which incoming challenges are accepted (lichess-bot's ``challenge`` section)."""

    concurrency: int = 1  # games at the same time (accepted challenges count until their game starts)
    accept_bot: bool = True  # accept challenges from bots
    only_bot: bool = False  # accept challenges from bots only
    min_base: int = 0  # initial clock time, seconds
    max_base: int = 1800
    min_increment: int = 0  # seconds
    max_increment: int = 20
    variants: list[str] = dataclasses.field(default_factory=lambda: ["standard"])
    time_controls: list[str] = dataclasses.field(
        default_factory=lambda: ["bullet", "blitz", "rapid", "classical"]
    )
    modes: list[str] = dataclasses.field(default_factory=lambda: ["casual", "rated"])
    min_rating: int = 0  # challenger's rating in the challenge's perf
    max_rating: int = 4000
    rating_difference: int | None = None  # if set: at most this far from the bot's own rating
    block_list: list[str] = dataclasses.field(default_factory=list)  # always declined
    allow_list: list[str] = dataclasses.field(default_factory=list)  # if not empty: only these are accepted
    max_simultaneous_games_per_user: int = 1
    accept_timeout: float = 30.0  # seconds an accepted challenge holds a slot while its game has not started

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"challenge.concurrency must be >= 1, not {self.concurrency}")
        bad = [v for v in self.variants if v not in PLAYABLE_VARIANTS]
        if bad:
            raise ConfigError(
                f"challenge.variants: {', '.join(bad)} not playable (the engine plays standard chess: "
                f"allowed {', '.join(PLAYABLE_VARIANTS)})"
            )
        bad = [s for s in self.time_controls if s not in PLAYABLE_SPEEDS]
        if bad:
            raise ConfigError(
                f"challenge.time_controls: {', '.join(bad)} not playable (bots cannot play ultraBullet and this "
                f"bot plays clock games only: allowed {', '.join(PLAYABLE_SPEEDS)})"
            )
        bad = [m for m in self.modes if m not in ("casual", "rated")]
        if bad:
            raise ConfigError(f"challenge.modes: {', '.join(bad)} unknown (allowed: casual, rated)")
        if not 0 <= self.min_base <= self.max_base:
            raise ConfigError(
                f"challenge: need 0 <= min_base <= max_base, got {self.min_base}, {self.max_base}"
            )
        if not 0 <= self.min_increment <= self.max_increment:
            raise ConfigError(
                f"challenge: need 0 <= min_increment <= max_increment, got {self.min_increment}, {self.max_increment}"
            )
        if self.min_rating > self.max_rating:
            raise ConfigError(
                f"challenge: min_rating {self.min_rating} is above max_rating {self.max_rating}"
            )
        if self.max_simultaneous_games_per_user < 1:
            raise ConfigError("challenge.max_simultaneous_games_per_user must be >= 1")


@dataclasses.dataclass
class GreetingConfig:
    """Chat lines; ``{me}`` and ``{opponent}`` are replaced, empty lines are not sent."""

    hello: str = "Hi {opponent}, I'm {me}, a language model that reads the game as PGN. Good luck!"
    goodbye: str = "Good game!"
    hello_spectators: str = ""
    goodbye_spectators: str = ""


@dataclasses.dataclass
class MatchmakingConfig:
    """Challenging online bots while idle (lichess-bot's ``matchmaking`` section)."""

    allow_matchmaking: bool = False
    challenge_timeout: float = 30.0  # minutes idle before a challenge goes out
    challenge_initial_time: list[int] = dataclasses.field(
        default_factory=lambda: [60, 180]
    )  # seconds, one at random
    challenge_increment: list[int] = dataclasses.field(
        default_factory=lambda: [1, 2]
    )  # seconds, one at random
    challenge_mode: Literal["random", "casual", "rated"] = "random"
    opponent_min_rating: int = 600
    opponent_max_rating: int = 4000
    opponent_rating_difference: int | None = 300
    block_list: list[str] = dataclasses.field(default_factory=list)
    daily_challenge_limit: int = (
        50  # challenges sent per UTC day (Lichess caps bot-vs-bot games at 100 a day)
    )
    decline_cooldown: float = 60.0  # minutes before a bot that declined is challenged again
    challenge_expiry: float = 30.0  # seconds an unanswered challenge of ours waits before it is cancelled

    def __post_init__(self) -> None:
        if self.challenge_timeout < 0:
            raise ConfigError("matchmaking.challenge_timeout must be >= 0 (minutes)")
        if not self.challenge_initial_time or not self.challenge_increment:
            raise ConfigError(
                "matchmaking.challenge_initial_time and challenge_increment need at least one value"
            )
        if any(t < 0 for t in self.challenge_initial_time) or any(i < 0 for i in self.challenge_increment):
            raise ConfigError("matchmaking: times and increments must be >= 0")
        if self.daily_challenge_limit < 0:
            raise ConfigError("matchmaking.daily_challenge_limit must be >= 0")


@dataclasses.dataclass
class NetworkConfig:
    """Timeouts, retries and waits, in seconds."""

    connect_timeout: float = 5.0
    request_timeout: float = 10.0  # answer to one ordinary request
    move_timeout: float = 5.0  # answer to a move (kept short: the clock runs)
    stream_stall_timeout: float = 20.0  # no data and no keep-alive this long: reconnect
    rate_limit_wait: float = 60.0  # after a 429
    move_rate_limit_wait: float = 1.0  # after a 429 on a move
    backoff_initial: float = 1.0  # 5xx and connection errors: exponential backoff from here...
    backoff_max: float = 60.0  # ...up to here
    backoff_jitter: float = 0.5  # each wait is drawn from [1 - jitter, 1] times the nominal wait
    max_retries: int = 5  # retries of one request after 5xx or connection errors
    move_retries: int = 3  # sends of one move after an unclear failure (never after a 400)
    game_resync_wait: float = (
        2.0  # after a move with no answer, wait this long for the stream before resending
    )

    def __post_init__(self) -> None:
        for name in (
            "connect_timeout",
            "request_timeout",
            "move_timeout",
            "stream_stall_timeout",
            "backoff_initial",
            "backoff_max",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"network.{name} must be > 0")
        if not 0 <= self.backoff_jitter <= 1:
            raise ConfigError("network.backoff_jitter must be in [0, 1]")
        if self.max_retries < 0 or self.move_retries < 1:
            raise ConfigError("network.max_retries must be >= 0 and network.move_retries >= 1")


@dataclasses.dataclass
class BotConfig:
    url: str = "https://lichess.org"  # server base URL (a local server in tests)
    token_env: str = "LICHESS_BOT_TOKEN"  # environment variable holding the token...
    token_file: str = ""  # ...or a file holding it (read when the variable is unset)
    engine_file: str = ""  # engine YAML (configs/engine.yaml); the `engine` section below overrides it
    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig)
    move_overhead: int = 1000  # ms kept back from every move's budget for the network
    abort_time: float = 30.0  # seconds: abort a game whose opponent has not made a first move by then
    claim_victory: bool = True  # claim the win when the opponent left and Lichess allows it
    pgn_directory: str = ""  # finished games are written here as PGN ("" = none)
    test_move: bool = True  # play one move with the model before connecting
    challenge: ChallengeConfig = dataclasses.field(default_factory=ChallengeConfig)
    greeting: GreetingConfig = dataclasses.field(default_factory=GreetingConfig)
    matchmaking: MatchmakingConfig = dataclasses.field(default_factory=MatchmakingConfig)
    network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)
    log_level: str = "INFO"
    log_file: str = ""  # stderr when empty

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"url: {self.url!r} is not an http(s) URL")
        if self.move_overhead < 0:
            raise ConfigError("move_overhead must be >= 0 (milliseconds)")
        if self.abort_time <= 0:
            raise ConfigError("abort_time must be > 0 (seconds)")


def load_bot_config(
    path: str | Path | None = None, overrides: Iterable[str] | Mapping[str, Any] = ()
) -> BotConfig:
    """Defaults < engine_file < the bot YAML < ``key=value`` overrides, validated.

    A relative ``engine_file`` is looked up in the current directory, then next to
    the bot config.
    """
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    extra = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    data = deep_merge(data, extra)
    if "token" in data:
        raise ConfigError(
            "token: the Lichess token never goes into a config file; set the environment variable "
            "LICHESS_BOT_TOKEN (or token_env) or point token_file at a file that holds it"
        )
    engine_file = data.get("engine_file") or ""
    if engine_file:
        engine_path = Path(str(engine_file))
        if not engine_path.is_file() and path is not None and not engine_path.is_absolute():
            beside = Path(path).parent / engine_path
            if beside.is_file():
                engine_path = beside
        if not engine_path.is_file():
            raise ConfigError(f"engine_file: engine config {engine_file!r} not found")
        engine_section = data.get("engine") or {}
        if not isinstance(engine_section, Mapping):
            raise ConfigError(f"engine: expected a mapping of engine keys, got {engine_section!r}")
        data["engine"] = deep_merge(read_yaml(engine_path), engine_section)
        data["engine_file"] = str(engine_path)
    return build_dataclass(BotConfig, data)


def resolve_token(cfg: BotConfig, env: Mapping[str, str] | None = None) -> str:
    """The token from ``cfg.token_env`` in the environment, else from ``cfg.token_file``."""
    import os

    env = os.environ if env is None else env
    token = env.get(cfg.token_env, "").strip() if cfg.token_env else ""
    if token:
        return token
    if cfg.token_file:
        path = Path(cfg.token_file).expanduser()
        if not path.is_file():
            raise TokenError(f"token_file {str(path)!r} does not exist (and {cfg.token_env} is not set)")
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise TokenError(f"token_file {str(path)!r} is empty")
        if len(token.split()) != 1:
            raise TokenError(f"token_file {str(path)!r} must hold the token alone on one line")
        return token
    raise TokenError(
        f"no Lichess token: set the environment variable {cfg.token_env} or token_file in the config "
        "(a token with the bot:play scope, from https://lichess.org/account/oauth/token/create?scopes[]=bot:play)"
    )
