"""Matchmaking: challenge an online bot when idle, within a daily cap.

Follows lichess-bot's ``matchmaking`` section: after ``challenge_timeout`` minutes
without a game, pick an online bot (rating within range of the bot's own in the
chosen speed), send it a challenge of one of the configured clocks, and wait for
the answer. A bot that declines is left alone for ``decline_cooldown`` minutes;
an unanswered challenge is cancelled after ``challenge_expiry`` seconds. At most
``daily_challenge_limit`` challenges go out per UTC day.
"""

from __future__ import annotations

import datetime
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from loguru import logger

from bot.client import LichessClient
from bot.config import MatchmakingConfig
from bot.errors import ApiError, RateLimitedError


def speed_of(limit_s: int, increment_s: int) -> str:
    """Lichess's speed of a clock: estimated game time = limit + 40 x increment."""
    total = limit_s + 40 * increment_s
    if total < 30:
        return "ultraBullet"
    if total < 180:
        return "bullet"
    if total < 480:
        return "blitz"
    if total < 1500:
        return "rapid"
    return "classical"


class Matchmaker:
    def __init__(
        self,
        cfg: MatchmakingConfig,
        client: LichessClient,
        *,
        user_id: str,
        my_ratings: Mapping[str, int],
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        today: Callable[[], datetime.date] = lambda: datetime.datetime.now(datetime.timezone.utc).date(),
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.user_id = user_id
        self.my_ratings = dict(my_ratings)
        self.rng = rng or random.Random()
        self.clock = clock
        self.today = today
        self.last_activity = clock()
        self.pending: tuple[str, str, float] | None = None  # (challenge id, opponent id, sent at)
        self.cooldown: dict[str, float] = {}  # opponent id -> not before (clock time)
        self.day = today()
        self.sent_today = 0
        self.blocked = {u.lower() for u in cfg.block_list}
        self._next_try = 0.0

    def note_activity(self) -> None:
        self.last_activity = self.clock()

    def busy(self) -> bool:
        return self.pending is not None

    def _roll_day(self) -> None:
        day = self.today()
        if day != self.day:
            self.day, self.sent_today = day, 0

    def due(self, games_running: int) -> bool:
        if not self.cfg.allow_matchmaking or games_running > 0 or self.pending is not None:
            return False
        self._roll_day()
        now = self.clock()
        if self.sent_today >= self.cfg.daily_challenge_limit:
            return False
        return now - self.last_activity >= self.cfg.challenge_timeout * 60 and now >= self._next_try

    def tick(self, games_running: int) -> None:
        """Call often: expires an unanswered challenge, sends a new one when due."""
        self._expire()
        if self.due(games_running):
            self.challenge_someone()

    def _expire(self) -> None:
        if self.pending is None:
            return
        cid, opponent, sent_at = self.pending
        if self.clock() - sent_at < self.cfg.challenge_expiry:
            return
        logger.info("matchmaking: {} did not answer challenge {}; cancelling it", opponent, cid)
        self.pending = None
        self.cooldown[opponent] = self.clock() + self.cfg.decline_cooldown * 60
        try:
            self.client.cancel_challenge(cid)
        except ApiError as exc:
            logger.info("matchmaking: cancel {} failed: {}", cid, exc)

    def _candidates(self, bots: list[dict[str, Any]], speed: str) -> list[dict[str, Any]]:
        now = self.clock()
        mine = self.my_ratings.get(speed)
        lo, hi = self.cfg.opponent_min_rating, self.cfg.opponent_max_rating
        if self.cfg.opponent_rating_difference is not None and mine:
            lo, hi = (
                max(lo, mine - self.cfg.opponent_rating_difference),
                min(hi, mine + self.cfg.opponent_rating_difference),
            )
        out = []
        for b in bots:
            bid = str(b.get("id", "")).lower()
            if not bid or bid == self.user_id or bid in self.blocked or self.cooldown.get(bid, 0.0) > now:
                continue
            perf = (b.get("perfs") or {}).get(speed) or {}
            rating = perf.get("rating")
            if rating is None or not lo <= int(rating) <= hi:
                continue
            out.append(b)
        return out

    def challenge_someone(self) -> str | None:
        """Send one challenge; returns the opponent's id, or None when nobody fits."""
        limit = self.rng.choice(self.cfg.challenge_initial_time)
        inc = self.rng.choice(self.cfg.challenge_increment)
        speed = speed_of(limit, inc)
        mode = self.cfg.challenge_mode
        rated = self.rng.random() < 0.5 if mode == "random" else mode == "rated"
        # Retry later either way: every minute at most, or sooner when told so.
        self._next_try = self.clock() + min(60.0, self.cfg.challenge_timeout * 60 + 1.0)
        try:
            bots = self.client.online_bots()
        except ApiError as exc:
            logger.warning("matchmaking: cannot list online bots: {}", exc)
            return None
        candidates = self._candidates(bots, speed)
        if not candidates:
            logger.info("matchmaking: no online bot fits ({} {}+{})", speed, limit, inc)
            return None
        opponent = self.rng.choice(candidates)
        oid = str(opponent["id"]).lower()
        try:
            answer = self.client.create_challenge(oid, limit=limit, increment=inc, rated=rated)
        except RateLimitedError as exc:
            logger.warning("matchmaking: rate limited: {}", exc)
            self._next_try = self.clock() + exc.wait_s
            return None
        except ApiError as exc:
            logger.warning("matchmaking: challenge to {} failed: {}", oid, exc)
            self.cooldown[oid] = self.clock() + self.cfg.decline_cooldown * 60
            return None
        cid = str(answer.get("id") or (answer.get("challenge") or {}).get("id") or "")
        self.sent_today += 1
        self.pending = (cid, oid, self.clock())
        logger.info(
            "matchmaking: challenged {} ({} {}+{}, {}), {} of {} today",
            oid,
            speed,
            limit,
            inc,
            "rated" if rated else "casual",
            self.sent_today,
            self.cfg.daily_challenge_limit,
        )
        return oid

    def on_declined(self, challenge: Mapping[str, Any]) -> None:
        dest = str((challenge.get("destUser") or {}).get("id", "")).lower()
        cid = str(challenge.get("id", ""))
        if self.pending is not None and self.pending[0] == cid:
            self.pending = None
        if dest:
            self.cooldown[dest] = self.clock() + self.cfg.decline_cooldown * 60
            logger.info(
                "matchmaking: {} declined ({}); not challenging it for {:g} min",
                dest,
                challenge.get("declineReasonKey", "?"),
                self.cfg.decline_cooldown,
            )

    def on_game_start(self, game_id: str) -> None:
        if self.pending is not None and self.pending[0] == game_id:
            self.pending = None
        self.note_activity()
