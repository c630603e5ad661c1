"""The Lichess client: berserk on a session with timeouts, retries and redaction.

berserk sends requests with no timeout and no retry, so:

* :class:`BotSession` is a ``requests.Session`` that gives every request a
  ``(connect, read)`` timeout unless the caller set one, and carries the token in
  its headers only (its ``repr`` does not show it).
* :meth:`LichessClient._call` runs one API call under the rules bot owners learnt
  the hard way (lichess-bot's ``lib/lichess.py``; the Lichess API docs): a 429 puts
  that endpoint on hold for ``rate_limit_wait`` seconds (``move_rate_limit_wait`` for
  moves) and nothing is sent to it meanwhile; 5xx answers, timeouts and connection
  errors are retried with exponential backoff and jitter; any other 4xx is final.
* Every error message passes through :class:`Redactor`, so the token never reaches
  a log line or an exception.

Moves are special (:meth:`LichessClient.make_move`): they are sent once and the
outcome is returned, because only the game stream can tell whether a move whose
answer was lost was played; the game loop decides what to do next.
"""

from __future__ import annotations

import enum
import random
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import berserk
import requests
from berserk.exceptions import ApiError as BerserkApiError
from berserk.exceptions import ResponseError as BerserkResponseError
from berserk.formats import JSON, NDJSON_LIST
from berserk.session import Requestor
from loguru import logger

from bot.config import NetworkConfig
from bot.errors import ApiError, RateLimitedError, TokenError, TransientError

T = TypeVar("T")

USER_AGENT = "mistral-chess-bot/0.1"
MAX_CHAT_LENGTH = 140  # Lichess drops longer chat lines


class Redactor:
    """Replaces secrets (the token) in any text with ``***``."""

    def __init__(self, *secrets: str) -> None:
        self._secrets = [s for s in secrets if s]
        self._bearer = re.compile(r"(Bearer\s+)\S+", re.IGNORECASE)

    def add(self, secret: str) -> None:
        if secret and secret not in self._secrets:
            self._secrets.append(secret)

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return self._bearer.sub(r"\1***", text)

    def patch_record(self, record: Any) -> None:
        """A loguru patcher: redacts the message of every log record."""
        record["message"] = self(record["message"])


class BotSession(requests.Session):
    """A session with a default ``(connect, read)`` timeout and the bearer token."""

    def __init__(self, token: str, *, connect_timeout: float, read_timeout: float) -> None:
        super().__init__()
        self.default_timeout = (connect_timeout, read_timeout)
        self.headers["Authorization"] = f"Bearer {token}"
        self.headers["User-Agent"] = USER_AGENT

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        return super().request(method, url, *args, **kwargs)

    def __repr__(self) -> str:  # the headers hold the token
        return f"<BotSession timeout={self.default_timeout}>"


class MoveOutcome(enum.Enum):
    SENT = "sent"  # 200: the server took the move
    REJECTED = "rejected"  # 4xx: illegal, not our turn, game over; never resent as is
    RATE_LIMITED = "rate-limited"  # 429: wait move_rate_limit_wait, then maybe resend
    UNKNOWN = "unknown"  # timeout, connection error or 5xx: the stream tells whether it was played


def backoff_delay(attempt: int, net: NetworkConfig, rng: random.Random) -> float:
    """Exponential backoff with jitter: attempt 0 waits about ``backoff_initial``."""
    nominal = min(net.backoff_max, net.backoff_initial * (2**attempt))
    return nominal * (1.0 - net.backoff_jitter * rng.random())


class LichessClient:
    """The Bot API calls the bot makes, with the network rules above."""

    def __init__(
        self,
        token: str,
        base_url: str,
        network: NetworkConfig,
        *,
        stop: threading.Event | None = None,
        redactor: Redactor | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not token:
            raise TokenError("no Lichess token given")
        self.base_url = base_url.rstrip("/") + "/"
        self.net = network
        self.stop = stop or threading.Event()
        self.redact = redactor or Redactor()
        self.redact.add(token)
        self._token = token
        self.rng = rng or random.Random()
        self.session = BotSession(
            token, connect_timeout=network.connect_timeout, read_timeout=network.request_timeout
        )
        self.berserk = berserk.Client(session=self.session, base_url=self.base_url)
        self._r: Requestor[Any] = Requestor(self.session, self.base_url, default_fmt=JSON)
        self._hold_until: dict[str, float] = {}
        self._hold_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<LichessClient {self.base_url}>"

    def stream_session(self) -> BotSession:
        """A session of its own for one stream.

        A stream closed from another thread must not hand its connection back to
        the pool the other requests share (a second thread would then read from a
        socket the stream's reader still holds).
        """
        return BotSession(
            self._token, connect_timeout=self.net.connect_timeout, read_timeout=self.net.stream_stall_timeout
        )

    def url(self, path: str) -> str:
        return self.base_url + path.lstrip("/")

    # -- the rules -------------------------------------------------------------------
    def hold_left(self, endpoint: str) -> float:
        with self._hold_lock:
            return max(0.0, self._hold_until.get(endpoint, 0.0) - time.monotonic())

    def hold(self, endpoint: str, seconds: float) -> None:
        with self._hold_lock:
            self._hold_until[endpoint] = max(self._hold_until.get(endpoint, 0.0), time.monotonic() + seconds)

    def note_rate_limited(
        self, endpoint: str, response: requests.Response | None, default_wait: float
    ) -> float:
        wait = default_wait
        retry_after = response.headers.get("Retry-After") if response is not None else None
        if retry_after:
            try:
                wait = max(wait, float(retry_after))
            except ValueError:
                pass
        self.hold(endpoint, wait)
        logger.warning("{}: rate limited (429); nothing goes to this endpoint for {:.1f} s", endpoint, wait)
        return wait

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, BerserkResponseError):
            cause = exc.cause
            detail = cause.get("error", cause) if isinstance(cause, dict) else (cause or exc.reason)
            return self.redact(f"HTTP {exc.status_code}: {detail}")
        inner = getattr(exc, "error", None) or exc
        return self.redact(f"{type(inner).__name__}: {inner}")

    def _call(
        self,
        endpoint: str,
        fn: Callable[[], T],
        *,
        retries: int | None = None,
        wait_if_held: bool = False,
        rate_limit_wait: float | None = None,
    ) -> T:
        """Run ``fn`` (one request) under the rate-limit, retry and redaction rules."""
        retries = self.net.max_retries if retries is None else retries
        attempt = 0
        while True:
            left = self.hold_left(endpoint)
            if left > 0:
                if not wait_if_held:
                    raise RateLimitedError(
                        f"{endpoint}: rate limited, {left:.1f} s to wait", wait_s=left, endpoint=endpoint
                    )
                if self.stop.wait(left):
                    raise TransientError(
                        f"{endpoint}: stopped while waiting out a rate limit", endpoint=endpoint
                    )
            try:
                return fn()
            except BerserkResponseError as exc:
                status = exc.status_code
                if status == 429:
                    wait = self.note_rate_limited(
                        endpoint,
                        exc.response,
                        self.net.rate_limit_wait if rate_limit_wait is None else rate_limit_wait,
                    )
                    if wait_if_held and attempt < retries:
                        attempt += 1
                        continue
                    raise RateLimitedError(
                        f"{endpoint}: {self._describe(exc)}", wait_s=wait, endpoint=endpoint
                    ) from None
                if status < 500:
                    raise ApiError(
                        f"{endpoint}: {self._describe(exc)}", status=status, endpoint=endpoint
                    ) from None
                problem = self._describe(exc)
            except BerserkApiError as exc:
                problem = self._describe(exc)
            except requests.RequestException as exc:
                problem = self._describe(exc)
            if attempt >= retries:
                raise TransientError(
                    f"{endpoint}: {problem} (gave up after {attempt + 1} tries)", endpoint=endpoint
                )
            delay = backoff_delay(attempt, self.net, self.rng)
            logger.warning(
                "{}: {}; retry {} of {} in {:.2f} s", endpoint, problem, attempt + 1, retries, delay
            )
            attempt += 1
            if self.stop.wait(delay):
                raise TransientError(f"{endpoint}: stopped during backoff", endpoint=endpoint)

    # -- account -----------------------------------------------------------------------
    def test_token(self) -> dict[str, Any]:
        """``POST /api/token/test``: the token's user and scopes; a bad token is a TokenError.

        Sent with the session directly (berserk logs request bodies at DEBUG, and this
        body is the token).
        """

        def run() -> Any:
            r = self.session.post(
                self.url("/api/token/test"), data=self._token, headers={"Content-Type": "text/plain"}
            )
            if not r.ok:
                raise BerserkResponseError(r)
            return r.json()

        try:
            answer = self._call("token_test", run, wait_if_held=True)
        except ApiError as exc:
            raise TokenError(f"could not check the token with {self.base_url}: {exc}") from None
        info = answer.get(self._token) if isinstance(answer, dict) else None
        if not info:
            raise TokenError(
                f"{self.base_url} does not know this token (revoked or mistyped?): make one with the bot:play "
                "scope at https://lichess.org/account/oauth/token/create?scopes[]=bot:play"
            )
        scopes = [s for s in str(info.get("scopes", "")).split(",") if s]
        if "bot:play" not in scopes:
            raise TokenError(
                f"the token of {info.get('userId', '?')} lacks the bot:play scope (it has: {', '.join(scopes) or 'none'}); "
                "make a new one with 'Play games with the bot API'"
            )
        return dict(info)

    def account(self) -> dict[str, Any]:
        try:
            return dict(self._call("account", self.berserk.account.get, wait_if_held=True))
        except ApiError as exc:
            if exc.status == 401:
                raise TokenError(f"{self.base_url} refused the token (401): {exc}") from None
            raise

    def upgrade_to_bot(self) -> None:
        self._call("upgrade", self.berserk.account.upgrade_to_bot, retries=0)

    def playing(self) -> list[dict[str, Any]]:
        """``GET /api/account/playing``: the games in progress, most urgent first."""
        answer = self._call(
            "playing", lambda: self._r.get("/api/account/playing", params={"nb": 50}), wait_if_held=True
        )
        return list(answer.get("nowPlaying", []))

    def online_bots(self, nb: int = 100) -> list[dict[str, Any]]:
        return list(
            self._call(
                "online_bots", lambda: self._r.get("/api/bot/online", params={"nb": nb}, fmt=NDJSON_LIST)
            )
        )

    # -- challenges ----------------------------------------------------------------------
    def accept_challenge(self, challenge_id: str) -> None:
        self._call("accept", lambda: self.berserk.bots.accept_challenge(challenge_id), retries=2)

    def decline_challenge(self, challenge_id: str, reason: str) -> None:
        # Form-encoded as the spec defines the body (berserk sends JSON).
        self._call(
            "decline",
            lambda: self._r.post(f"/api/challenge/{challenge_id}/decline", data={"reason": reason}),
            retries=2,
        )

    def create_challenge(self, username: str, *, limit: int, increment: int, rated: bool) -> dict[str, Any]:
        data: dict[str, str | int] = {
            "rated": str(rated).lower(),
            "clock.limit": limit,
            "clock.increment": increment,
            "color": "random",
        }
        return dict(
            self._call("challenge", lambda: self._r.post(f"/api/challenge/{username}", data=data), retries=1)
        )

    def cancel_challenge(self, challenge_id: str) -> None:
        self._call("cancel", lambda: self.berserk.challenges.cancel(challenge_id), retries=1)

    # -- games -----------------------------------------------------------------------------
    def make_move(self, game_id: str, uci: str, *, offering_draw: bool = False) -> tuple[MoveOutcome, str]:
        """Send one move once; the outcome and, when not sent, why."""
        endpoint = f"move:{game_id}"
        left = self.hold_left(endpoint)
        if left > 0:
            return MoveOutcome.RATE_LIMITED, f"rate limited for {left:.1f} s more"
        params = {"offeringDraw": "true"} if offering_draw else None
        try:
            self._r.post(
                f"/api/bot/game/{game_id}/move/{uci}",
                params=params,
                timeout=(self.net.connect_timeout, self.net.move_timeout),
            )
            return MoveOutcome.SENT, ""
        except BerserkResponseError as exc:
            if exc.status_code == 429:
                self.note_rate_limited(endpoint, exc.response, self.net.move_rate_limit_wait)
                return MoveOutcome.RATE_LIMITED, self._describe(exc)
            if exc.status_code < 500:
                return MoveOutcome.REJECTED, self._describe(exc)
            return MoveOutcome.UNKNOWN, self._describe(exc)
        except (BerserkApiError, requests.RequestException) as exc:
            return MoveOutcome.UNKNOWN, self._describe(exc)

    def chat(self, game_id: str, room: str, text: str) -> None:
        text = text[:MAX_CHAT_LENGTH]
        self._call(
            "chat",
            lambda: self._r.post(f"/api/bot/game/{game_id}/chat", data={"room": room, "text": text}),
            retries=1,
        )

    def abort(self, game_id: str) -> None:
        self._call("abort", lambda: self.berserk.bots.abort_game(game_id))

    def resign(self, game_id: str) -> None:
        self._call("resign", lambda: self.berserk.bots.resign_game(game_id))

    def answer_draw(self, game_id: str, *, accept: bool) -> None:
        answer = "yes" if accept else "no"
        self._call("draw", lambda: self._r.post(f"/api/bot/game/{game_id}/draw/{answer}"))

    def answer_takeback(self, game_id: str, *, accept: bool) -> None:
        answer = "yes" if accept else "no"
        self._call("takeback", lambda: self._r.post(f"/api/bot/game/{game_id}/takeback/{answer}"))

    def claim_victory(self, game_id: str) -> None:
        self._call("claim", lambda: self._r.post(f"/api/bot/game/{game_id}/claim-victory"), retries=2)

    def close(self) -> None:
        self.session.close()
