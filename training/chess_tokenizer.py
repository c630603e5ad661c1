"""A small byte-level BPE tokenizer for chess PGN text, for models trained from scratch.

Mistral's 32,000-token vocabulary costs 32,000 x hidden parameters twice (embedding and
head): 16M parameters at width 256, more than a whole small model. A PGN-trained BPE
of a few thousand tokens writes most SAN moves (`` Nf3``) and move numbers (`` 12.``)
as one token each, so games are also 2-3x shorter in tokens.

Text is first split at spaces (each piece keeps its leading space) and newlines, so a
token never crosses a move boundary: a move's tokens do not depend on the text before
it, the property the engine's candidate scoring relies on. Byte-level coding means any
text (player names, FEN tags) can be written. ``<s>`` is prepended like Mistral's BOS.

Board squares (:func:`with_board_squares`, ``model.tokenizer_board_squares``): the board
field of a FEN (``[FEN "..."]`` tags of board-window prompts) is written one token a
square. A normalizer expands each run-length digit into that many ``1`` (one empty square
each, what a ``1`` already means in a FEN), and a first pre-tokenizer cuts every character of
the field out on its own, so BPE merges (``b1``, ``/2``...) never join squares: every board
is 64 squares and 7 slashes, 71 tokens, and a square sits at a fixed distance from the
field's start, where plain FEN text makes the model count digits to find it. The prompt
text stays standard PGN; only the tokenizer shipped in the model folder reads it so, and
every part of the project that tokenizes (trainer, engine, model server) loads that file.
The field is found by what follows it (the side to move: ``w`` or ``b`` between spaces),
which SAN move text never has.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training.errors import DataError

SPECIALS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 as in Mistral's vocabulary
SPLIT_PATTERN = r" ?[^ \n]+|\n+| +"
# A FEN's board field: the characters before " w " or " b " (the side to move).
_BOARD_CHARS = "[1-8pnbrqkPNBRQK/]"
_BEFORE_SIDE = f"(?={_BOARD_CHARS}*[ ]+[wb][ ])"
BOARD_DIGIT_PATTERN = "{digit}" + _BEFORE_SIDE  # a run of empty squares, expanded to "1" x digit
BOARD_SQUARE_PATTERN = "[1pnbrqkPNBRQK/]" + _BEFORE_SIDE  # after expansion: one square (or slash)


def _texts(dataset_dir: str | Path, limit: int) -> Iterator[str]:
    from training.data import read_rows

    rows = read_rows(dataset_dir, "train", ["prompt", "completion"], limit)
    for prompt, completion in zip(rows["prompt"], rows["completion"], strict=True):
        yield prompt + completion


def _plain_pre_tokenizers() -> list[Any]:
    from tokenizers import Regex, pre_tokenizers

    return [
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]


def _set_board_squares(backend: Any) -> None:
    from tokenizers import Regex, normalizers, pre_tokenizers

    backend.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(BOARD_DIGIT_PATTERN.format(digit=d)), "1" * d) for d in range(2, 9)]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(BOARD_SQUARE_PATTERN), behavior="isolated"), *_plain_pre_tokenizers()]
    )


def _pre_tokenizer_kind(backend: Any) -> str:
    """``plain`` (this module's BPE), ``board-squares`` (the same, rewritten) or ``other``."""
    spec = json.loads(backend.to_str())
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not parts or parts[-1].get("type") != "ByteLevel":
        return "other"
    patterns = [(p.get("pattern") or {}).get("Regex") for p in parts[:-1]]
    if patterns == [SPLIT_PATTERN] and spec.get("normalizer") is None:
        return "plain"
    if patterns == [BOARD_SQUARE_PATTERN, SPLIT_PATTERN] and spec.get("normalizer") is not None:
        return "board-squares"
    return "other"


def has_board_squares(tokenizer: Any) -> bool:
    """Whether a fast tokenizer writes FEN boards one token a square (:func:`with_board_squares`)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and _pre_tokenizer_kind(backend) == "board-squares"


def with_board_squares(tokenizer: Any) -> Any:
    """Rewrite a chess BPE tokenizer (this module's, trained or loaded from a model folder)
    in place so that FEN boards are written one token a square; the vocabulary and every
    token id stay, so a model trained on plain FEN text can go on training. Idempotent."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    kind = _pre_tokenizer_kind(backend) if backend is not None else "other"
    if kind == "other":
        raise DataError(
            "model.tokenizer_board_squares needs the project's chess BPE tokenizer (model.tokenizer=chess-bpe, "
            "or a model folder trained with it): this tokenizer splits text its own way"
        )
    if kind == "plain":
        _set_board_squares(backend)
    return tokenizer


def build_chess_tokenizer(texts: Iterator[str], vocab_size: int, *, board_squares: bool = False) -> Any:
    """Train the BPE on ``texts`` and wrap it as a transformers fast tokenizer (with
    ``board_squares``, merges are learned on texts already read that way)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if board_squares:
        _set_board_squares(tok)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(_plain_pre_tokenizers())
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>", model_max_length=1 << 20
    )


def train_chess_tokenizer(
    dataset_dir: str | Path, vocab_size: int, *, max_texts: int = 200_000, board_squares: bool = False
) -> Any:
    if vocab_size < 300:
        raise DataError(f"model.tokenizer_vocab_size must be at least 300 (256 bytes + specials), not {vocab_size}")
    texts = list(_texts(dataset_dir, max_texts))
    if not texts:
        raise DataError(f"{dataset_dir}: no training examples to train the chess tokenizer on")
    return build_chess_tokenizer(iter(texts), vocab_size, board_squares=board_squares)
