"""Error hierarchy of the training package.

Every expected failure (a bad config, a missing file, an empty data set, a model that
does not fit) is one of these, with a message naming the input at fault, so the CLI
prints one line instead of a traceback. Corrupt *records* inside a data file are not
errors: they are counted, reported with their location, and skipped (see
:class:`training.sources.CorruptRecord`).
"""

from __future__ import annotations

from engine.errors import MistralChessError


class TrainingError(MistralChessError):
    """Base class of training errors."""


class DataError(TrainingError, ValueError):
    """A data file or folder is missing, unreadable as a whole, or holds no usable examples."""


class SelfPlayError(TrainingError):
    """Stockfish could not be started or misbehaved during self-play."""


class ResourceError(TrainingError):
    """The run would not fit the machine (GPU memory, no GPU for 4-bit, disk)."""


class CheckpointError(TrainingError):
    """A checkpoint is missing, incomplete, or from a different run configuration."""
