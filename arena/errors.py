"""Error hierarchy of the arena package.

Expected failures (a bad ``--engine`` spec, a missing Stockfish, a game log that
belongs to another match) get one clear line from ``mistral-chess``; engine faults
during a game are not errors of the arena: the referee scores them as losses.
"""

from __future__ import annotations

from engine.errors import MistralChessError


class ArenaError(MistralChessError):
    """Base class of arena errors."""


class EngineSpecError(ArenaError, ValueError):
    """An engine description (``mistral:DIR``, ``stockfish:ELO``, a command line) is wrong."""


class StockfishNotFoundError(ArenaError):
    """No Stockfish binary was found where the arena looks for one."""


class EngineStartError(ArenaError):
    """An engine could not be started (no program, no ``uciok``, no ``readyok``)."""


class TimeControlError(ArenaError, ValueError):
    """A time control string (``10+0.1``, ``40/60``) cannot be read."""


class OpeningsError(ArenaError, ValueError):
    """An opening suite file is missing, unreadable or holds an illegal line."""


class GameLogError(ArenaError):
    """A game log (the file a match resumes from) is unreadable or belongs to another match."""


class EngineFault(ArenaError):
    """An engine failed during a game: the referee turns this into a lost game.

    ``kind`` is ``crash`` (the process exited or closed its output) or ``stall``
    (no answer within the time allowed, not even to ``stop``).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
