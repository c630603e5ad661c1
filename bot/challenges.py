"""Incoming challenges: accept, or decline with the Lichess reason that fits.

The reasons are the keys of ``POST /api/challenge/{id}/decline`` (Lichess shows the
challenger a translated sentence for each):

========== ==========================================================
generic     "I'm not accepting challenges at the moment." (block list, allow list, rating)
later       "This is not the right time for me..." (all game slots busy)
tooFast     "This time control is too fast for me..."
tooSlow     "This time control is too slow for me..."
timeControl "I'm not accepting challenges with this time control."
rated       "Please send me a rated challenge instead."
casual      "Please send me a casual challenge instead."
standard    "I'm not accepting variant challenges right now."
variant     "This variant is not supported / not now."
noBot       "I'm not accepting challenges from bots."
onlyBot     "I'm only accepting challenges from bots."
========== ==========================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import chess

from bot.config import SPEEDS, ChallengeConfig

DECLINE_REASONS = (
    "generic",
    "later",
    "tooFast",
    "tooSlow",
    "timeControl",
    "rated",
    "casual",
    "standard",
    "variant",
    "noBot",
    "onlyBot",
)


@dataclasses.dataclass(frozen=True)
class Verdict:
    accept: bool
    reason: str = ""  # a DECLINE_REASONS key when declined
    detail: str = ""  # for the log

    def __str__(self) -> str:
        return "accept" if self.accept else f"decline ({self.reason}: {self.detail})"


def _speed_reason(speed: str, allowed: list[str]) -> str:
    order = {s: i for i, s in enumerate(SPEEDS)}
    ranks = [order[s] for s in allowed if s in order]
    if not ranks or speed not in order:
        return "timeControl"
    if order[speed] < min(ranks):
        return "tooFast"
    if order[speed] > max(ranks):
        return "tooSlow"
    return "timeControl"


def _clock_reason(limit: int, increment: int, cfg: ChallengeConfig) -> str:
    fast = limit < cfg.min_base or increment < cfg.min_increment
    slow = limit > cfg.max_base or increment > cfg.max_increment
    if fast and not slow:
        return "tooFast"
    if slow and not fast:
        return "tooSlow"
    return "timeControl" if fast or slow else ""


def _variant_reason(challenge: Mapping[str, Any], cfg: ChallengeConfig) -> str:
    variant = (challenge.get("variant") or {}).get("key", "standard")
    if variant not in cfg.variants:
        # "standard": we play standard chess only; "variant": not this one.
        return "standard" if cfg.variants == ["standard"] else "variant"
    fen = challenge.get("initialFen")
    if variant == "fromPosition" and fen and fen != "startpos":
        try:
            board = chess.Board(fen)
        except ValueError:
            return "variant"
        if board != chess.Board(fen, chess960=True) or not board.is_valid():
            return "variant"  # a Chess960 start or a broken position
    return ""


def check_challenge(
    challenge: Mapping[str, Any],
    cfg: ChallengeConfig,
    *,
    my_ratings: Mapping[str, int] | None = None,
    busy_slots: int = 0,
    games_with_challenger: int = 0,
) -> Verdict:
    """Accept or decline ``challenge`` (a ``ChallengeJson``), with the reason why not.

    ``my_ratings`` maps perf names (``blitz``) to the bot's ratings, for
    ``rating_difference``; ``busy_slots`` counts games in progress plus accepted
    challenges whose game has not started.
    """
    challenger = challenge.get("challenger") or {}
    who = str(challenger.get("id") or challenger.get("name") or "").lower()
    is_bot = challenger.get("title") == "BOT"
    blocked = {u.lower() for u in cfg.block_list}
    allowed = {u.lower() for u in cfg.allow_list}
    if who in blocked:
        return Verdict(False, "generic", f"{who} is on the block list")
    if allowed and who not in allowed:
        return Verdict(False, "generic", f"{who} is not on the allow list")
    if is_bot and not cfg.accept_bot:
        return Verdict(False, "noBot", "challenges from bots are not accepted")
    if not is_bot and cfg.only_bot:
        return Verdict(False, "onlyBot", "only bots may challenge")
    reason = _variant_reason(challenge, cfg)
    if reason:
        return Verdict(False, reason, f"variant {(challenge.get('variant') or {}).get('key')!r} not accepted")
    tc = challenge.get("timeControl") or {}
    speed = str(challenge.get("speed", ""))
    if tc.get("type") != "clock":
        return Verdict(
            False, "tooSlow", f"{tc.get('type', 'no')} time control: this bot plays clock games only"
        )
    if speed not in cfg.time_controls:
        return Verdict(False, _speed_reason(speed, cfg.time_controls), f"speed {speed} not accepted")
    limit, inc = int(tc.get("limit", 0)), int(tc.get("increment", 0))
    reason = _clock_reason(limit, inc, cfg)
    if reason:
        return Verdict(
            False,
            reason,
            f"clock {limit}+{inc} outside base {cfg.min_base}..{cfg.max_base} s, "
            f"increment {cfg.min_increment}..{cfg.max_increment} s",
        )
    rated = bool(challenge.get("rated"))
    if rated and "rated" not in cfg.modes:
        return Verdict(False, "casual", "rated games not accepted")
    if not rated and "casual" not in cfg.modes:
        return Verdict(False, "rated", "casual games not accepted")
    rating = challenger.get("rating")
    if isinstance(rating, int):
        lo, hi = cfg.min_rating, cfg.max_rating
        perf = str((challenge.get("perf") or {}).get("name") or speed).lower()
        mine = (my_ratings or {}).get(perf)
        if cfg.rating_difference is not None and mine:
            lo, hi = max(lo, mine - cfg.rating_difference), min(hi, mine + cfg.rating_difference)
        if not lo <= rating <= hi:
            return Verdict(False, "generic", f"rating {rating} outside {lo}..{hi}")
    if busy_slots >= cfg.concurrency:
        return Verdict(False, "later", f"all {cfg.concurrency} game slots busy")
    if games_with_challenger >= cfg.max_simultaneous_games_per_user:
        return Verdict(False, "later", f"already playing {games_with_challenger} game(s) with {who}")
    return Verdict(True)
