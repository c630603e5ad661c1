"""Error hierarchy of the engine package.

Every expected failure gets a subclass with a message that names the input at fault,
so entry points can print one clear line instead of a traceback.
"""

from __future__ import annotations


class MistralChessError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(MistralChessError, ValueError):
    """A configuration file, key or value is wrong (the message names the dotted key)."""


class PromptError(MistralChessError, ValueError):
    """A prompt template is malformed or cannot be rendered."""


class EngineError(MistralChessError):
    """Base class of engine errors."""


class ModelLoadError(EngineError):
    """The model, tokenizer or adapter could not be loaded."""


class PositionError(EngineError, ValueError):
    """A UCI ``position`` command named a broken FEN or an illegal move."""


class MoveParseError(EngineError, ValueError):
    """Model output could not be read as a legal move."""
