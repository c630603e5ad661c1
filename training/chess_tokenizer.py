"""A small byte-level BPE tokenizer for chess PGN text, for models trained from scratch.

Mistral's 32,000-token vocabulary costs 32,000 x hidden parameters twice (embedding and
head): 16M parameters at width 256, more than a whole small model. A PGN-trained BPE
of a few thousand tokens writes most SAN moves (`` Nf3``) and move numbers (`` 12.``)
as one token each, so games are also 2-3x shorter in tokens.

Text is first split at spaces (each piece keeps its leading space) and newlines, so a
token never crosses a move boundary: a move's tokens do not depend on the text before
it, the property the engine's candidate scoring relies on. Byte-level coding means any
text (player names, FEN tags) can be written. ``<s>`` is prepended like Mistral's BOS.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training.errors import DataError

SPECIALS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 as in Mistral's vocabulary
SPLIT_PATTERN = r" ?[^ \n]+|\n+| +"


def _texts(dataset_dir: str | Path, limit: int) -> Iterator[str]:
    from training.data import read_rows

    rows = read_rows(dataset_dir, "train", ["prompt", "completion"], limit)
    for prompt, completion in zip(rows["prompt"], rows["completion"], strict=True):
        yield prompt + completion


def build_chess_tokenizer(texts: Iterator[str], vocab_size: int) -> Any:
    """Train the BPE on ``texts`` and wrap it as a transformers fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
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


def train_chess_tokenizer(dataset_dir: str | Path, vocab_size: int, *, max_texts: int = 200_000) -> Any:
    if vocab_size < 300:
        raise DataError(f"model.tokenizer_vocab_size must be at least 300 (256 bytes + specials), not {vocab_size}")
    texts = list(_texts(dataset_dir, max_texts))
    if not texts:
        raise DataError(f"{dataset_dir}: no training examples to train the chess tokenizer on")
    return build_chess_tokenizer(iter(texts), vocab_size)
