"""Error hierarchy of the Lichess bot.

Every expected failure is a :class:`BotError` with a one-line message that names what
was wrong; messages never carry the token (the client redacts it before raising).
"""

from __future__ import annotations

from engine.errors import MistralChessError


class BotError(MistralChessError):
    """Base class of the bot's errors."""


class TokenError(BotError):
    """No token, a token Lichess does not know, or one without the ``bot:play`` scope."""


class AccountError(BotError):
    """The account cannot play as a bot (not upgraded, upgrade refused or not confirmed)."""


class StartupError(BotError):
    """A check before connecting failed (model load, test move, server unreachable)."""


class ApiError(BotError):
    """A request failed for good: a 4xx other than 429, or retries used up.

    ``status`` is the HTTP status (0 when no answer came: timeout or connection error).
    """

    def __init__(self, message: str, *, status: int = 0, endpoint: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.endpoint = endpoint


class RateLimitedError(ApiError):
    """Lichess answered 429 (or the endpoint is still cooling down from one)."""

    def __init__(self, message: str, *, wait_s: float, endpoint: str = "") -> None:
        super().__init__(message, status=429, endpoint=endpoint)
        self.wait_s = wait_s


class TransientError(ApiError):
    """A 5xx, timeout or connection error that outlived its retries."""


class StreamError(BotError):
    """A stream could not be opened or broke off; the caller reconnects.

    ``status`` is the HTTP status when the server refused the stream, else 0.
    """

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class StreamStalled(StreamError):
    """A stream sent nothing, not even a keep-alive line, for ``stream_stall_timeout`` seconds."""
