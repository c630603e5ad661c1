"""Training data: a built data set's examples -> token sequences -> packed rows -> batches.

* :func:`load_examples` reads a split. When the data set was tokenized with the same
  tokenizer (same fingerprint) its ``input_ids`` are used as they are; otherwise the
  text is tokenized here the way the engine does (``prompt + completion`` whole, the
  prompt being the tokens shared with ``tokenize(prompt)``), EOS appended where the
  completion ends the game.
* :func:`pack_rows` puts several examples in one row of at most ``max_length`` tokens
  (best-fit decreasing); each keeps its own positions, so attention stays inside it.
* :class:`BatchPlan` says which rows make micro-batch ``k`` on this rank: a fixed
  function of (seed, epoch, k). Resuming at optimizer step ``s`` is resuming at
  micro-batch ``s * gradient_accumulation_steps``, with no state to save.
* :class:`PackedCollator` turns rows into ``input_ids``, ``labels`` (-100 except on
  completion tokens) and ``position_ids`` (restarting at 0 for each example, which is
  how transformers recognises packed sequences when no attention mask is given).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from training.errors import DataError

IGNORE_INDEX = -100


@dataclasses.dataclass
class TokenizedSplit:
    """Examples as one flat int32 array with offsets (a few bytes per token, no Python lists)."""

    tokens: np.ndarray  # all examples' ids, concatenated
    offsets: np.ndarray  # example i is tokens[offsets[i]:offsets[i + 1]]
    prompt_lens: np.ndarray  # tokens of example i that are prompt (not trained on)
    dropped_too_long: int = 0
    # examples.legal_tokens (None without): legal first tokens of example i's moves: its sets are
    # j in legal_examples[i]:legal_examples[i + 1], set j is legal_values[legal_sets[j]:legal_sets[j + 1]]
    legal_values: np.ndarray | None = None
    legal_sets: np.ndarray | None = None
    legal_examples: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.prompt_lens)

    def ids(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def legal(self, i: int) -> list[np.ndarray]:
        """The legal first tokens of example ``i``'s moves, in order ([] without them)."""
        if self.legal_values is None or self.legal_sets is None or self.legal_examples is None:
            return []
        sets = self.legal_sets
        return [
            self.legal_values[sets[j] : sets[j + 1]]
            for j in range(int(self.legal_examples[i]), int(self.legal_examples[i + 1]))
        ]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def dataset_fingerprint(folder: str | Path) -> str | None:
    stats = Path(folder) / "stats.json"
    if not stats.is_file():
        return None
    tok = json.loads(stats.read_text()).get("tokenizer")
    return tok.get("fingerprint") if isinstance(tok, dict) else None


def tokenizer_fingerprint(tokenizer: Any) -> str:
    from training.dataset import tokenizer_fingerprint as fp

    return fp(tokenizer.backend_tokenizer)


def split_paths(folder: str | Path, split: str) -> list[Path]:
    return sorted(Path(folder).glob(f"{split}-*.parquet"))


def read_rows(folder: str | Path, split: str, columns: list[str], limit: int = 0) -> dict[str, list[Any]]:
    import pyarrow.parquet as pq

    out: dict[str, list[Any]] = {c: [] for c in columns}
    n = 0
    for path in split_paths(folder, split):
        pf = pq.ParquetFile(path)
        present = [c for c in columns if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=8192, columns=present):
            d = batch.to_pydict()
            take = batch.num_rows if not limit else min(batch.num_rows, limit - n)
            for c in columns:
                out[c].extend(d[c][:take] if c in d else [None] * take)
            n += take
            if limit and n >= limit:
                return out
    return out


def load_examples(
    folder: str | Path, split: str, tokenizer: Any, *, max_length: int, limit: int = 0
) -> TokenizedSplit:
    """Token sequences of a split (see the module docstring); examples over ``max_length`` are dropped."""
    if not split_paths(folder, split):
        raise DataError(f"{folder}: no {split}-*.parquet files (build the data set with `mistral-chess dataset build`)")
    if dataset_fingerprint(folder) == tokenizer_fingerprint(tokenizer):
        got = _pretokenized(folder, split, max_length, limit)
        if got is not None:
            return got
    rows = read_rows(folder, split, ["prompt", "completion", "eos"], limit)
    logger.info("tokenizing {} {} examples (the data set was tokenized with another tokenizer)", len(rows["prompt"]), split)
    seqs, prompt_lens = tokenize_texts(tokenizer, rows["prompt"], rows["completion"], rows["eos"])
    keep = [i for i, s in enumerate(seqs) if len(s) <= max_length]
    dropped = len(seqs) - len(keep)
    lengths = np.array([len(seqs[i]) for i in keep], dtype=np.int64)
    offsets = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.fromiter((t for i in keep for t in seqs[i]), dtype=np.int32, count=int(offsets[-1]))
    return TokenizedSplit(tokens, offsets, np.array([prompt_lens[i] for i in keep], dtype=np.int32), dropped)


def _pretokenized(folder: str | Path, split: str, max_length: int, limit: int) -> TokenizedSplit | None:
    """The data set's own ``input_ids``, straight from Arrow into numpy (no Python lists)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    tables = []
    n = 0
    paths = split_paths(folder, split)
    with_legal = all("legal_ids" in pq.ParquetFile(p).schema_arrow.names for p in paths)
    columns = ["input_ids", "prompt_tokens"] + (["legal_ids"] if with_legal else [])
    for path in paths:
        if "input_ids" not in pq.ParquetFile(path).schema_arrow.names:
            return None
        t = pq.read_table(path, columns=columns)
        if limit:
            t = t.slice(0, limit - n)
        tables.append(t)
        n += t.num_rows
        if limit and n >= limit:
            break
    table = pa.concat_tables(tables).combine_chunks()
    if table.num_rows and table["input_ids"].null_count:
        return None
    lengths = pc.list_value_length(table["input_ids"])
    fits = pc.less_equal(lengths, max_length)
    kept = table.filter(fits)
    ids = kept["input_ids"].combine_chunks()
    tokens = ids.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    raw = np.asarray(ids.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
    offsets = raw - raw[0]  # flatten() starts at the first list's first value
    prompt_lens = kept["prompt_tokens"].to_numpy(zero_copy_only=False).astype(np.int32)
    got = TokenizedSplit(tokens, offsets, prompt_lens, table.num_rows - kept.num_rows)
    if with_legal:
        outer = kept["legal_ids"].combine_chunks()  # list<list<int32>>: an example's sets
        inner = outer.flatten()  # list<int32>: the sets
        ex_off = np.asarray(outer.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
        set_off = np.asarray(inner.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
        got.legal_examples = ex_off - ex_off[0]
        got.legal_sets = set_off - set_off[0]  # inner is outer's slice of sets; its offsets may not start at 0
        got.legal_values = inner.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return got


def tokenize_texts(
    tokenizer: Any, prompts: list[str], completions: list[str], eos: list[bool], *, add_special_tokens: bool = True
) -> tuple[list[list[int]], list[int]]:
    """``tokenize(prompt + completion)`` and the prompt's share of it, as the engine tokenizes."""
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    seqs: list[list[int]] = []
    plens: list[int] = []
    eos_id = tokenizer.eos_token_id
    step = 4096
    for start in range(0, len(prompts), step):
        p = prompts[start : start + step]
        full = encode([a + b for a, b in zip(p, completions[start : start + step], strict=True)], add_special_tokens=add_special_tokens)
        head = encode(p, add_special_tokens=add_special_tokens)
        for f, h, e in zip(full, head, eos[start : start + step], strict=True):
            ids = list(f.ids)
            n = shared_prefix_len(ids, h.ids)
            if e and eos_id is not None:
                ids.append(eos_id)
            seqs.append(ids)
            plens.append(n)
    return seqs, plens


def shared_prefix_len(ids: list[int], prompt_ids: list[int]) -> int:
    """How many leading tokens of ``tokenize(prompt + completion)`` are ``tokenize(prompt)``'s:
    the prompt's share of an example, as the engine counts it."""
    n = 0
    for a, b in zip(ids, prompt_ids, strict=False):
        if a != b:
            break
        n += 1
    return n


def pack_rows(lengths: np.ndarray, max_length: int, *, packing: bool) -> list[np.ndarray]:
    """Rows of example indices. With packing: best-fit decreasing (each example goes to the
    open row with the least room that still fits it), so rows are nearly full."""
    if not packing:
        return [np.array([i]) for i in range(len(lengths))]
    order = np.argsort(-lengths, kind="stable")
    rows: list[list[int]] = []
    room: list[int] = []
    # by_room[c]: open rows with exactly c tokens of room; `nonempty` has bit c set when any.
    by_room: dict[int, list[int]] = {}
    nonempty = 0
    for i in order.tolist():
        need = int(lengths[i])
        fits = nonempty >> need
        if fits:
            c = need + ((fits & -fits).bit_length() - 1)
            r = by_room[c].pop()
            if not by_room[c]:
                nonempty &= ~(1 << c)
            rows[r].append(i)
        else:
            r = len(rows)
            rows.append([i])
            room.append(max_length)
            c = max_length
        left = c - need
        room[r] = left
        if left > 0:
            by_room.setdefault(left, []).append(r)
            nonempty |= 1 << left
    return [np.array(sorted(r)) for r in rows]


class BatchPlan:
    """Micro-batch ``k`` of rank ``rank``: rows of a seeded per-epoch permutation.

    An epoch is ``len(rows) // (batch_size * world)`` global micro-batches (the ragged
    end is left for the next epoch's permutation to cover).
    """

    def __init__(self, n_rows: int, batch_size: int, *, world: int = 1, rank: int = 0, seed: int = 0) -> None:
        self.n_rows, self.batch_size, self.world, self.rank, self.seed = n_rows, batch_size, world, rank, seed
        self.per_epoch = n_rows // (batch_size * world)
        if self.per_epoch == 0:
            raise DataError(
                f"{n_rows} training row(s) cannot fill one batch of {batch_size} x {world} process(es): "
                "use more data or a smaller per_device_train_batch_size"
            )
        self._epoch = -1
        self._perm: np.ndarray = np.arange(0)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)
            self._epoch = epoch
        return self._perm

    def epoch_of(self, k: int) -> float:
        return k / self.per_epoch

    def rows(self, k: int) -> np.ndarray:
        epoch, j = divmod(k, self.per_epoch)
        perm = self.permutation(epoch)
        start = (j * self.world + self.rank) * self.batch_size
        return perm[start : start + self.batch_size]


def move_start_tokens(tokenizer: Any) -> np.ndarray:
    """A boolean per token id: the token starts a SAN move in move text (a space, then a piece
    letter, a file or castling's O), the tokens whose targets the rules loss covers."""
    vocab = tokenizer.get_vocab()
    table = np.zeros(max(len(tokenizer), max(vocab.values()) + 1), dtype=bool)
    for token, i in vocab.items():
        if len(token) >= 2 and token[0] in ("\u0120", "\u2581") and token[1] in "KQRBNOabcdefgh":
            table[i] = True
    return table


class PackedCollator:
    """Rows of examples -> model inputs. One place to swap in padding-free batches later.

    With ``move_starts`` (:func:`move_start_tokens`) and a split with legal tokens, each batch
    also holds the rules targets: ``rules_pos`` (row, position) of the logits that predict each
    move of the completions, ``rules_ids`` the legal first tokens there (padded with -1). An
    example whose move tokens do not line up with its legal sets (or whose played move is not
    among them) gives none, counted in ``rules_skipped``.
    """

    def __init__(
        self,
        split: TokenizedSplit,
        rows: list[np.ndarray],
        *,
        pad_id: int,
        pad_to_multiple_of: int = 8,
        move_starts: np.ndarray | None = None,
    ) -> None:
        self.split, self.rows, self.pad_id, self.multiple = split, rows, pad_id, pad_to_multiple_of
        self.move_starts = move_starts if split.legal_values is not None else None
        self.rules_skipped = 0

    def rules_targets(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row ``r``'s moves: the positions in the packed row of the logits that predict them,
        and their legal first tokens (all sets' values one after another, and each set's size)."""
        assert self.move_starts is not None
        sp = self.split
        assert sp.legal_values is not None and sp.legal_sets is not None and sp.legal_examples is not None
        positions, values, sizes = [], [], []
        base = 0
        for i in self.rows[r]:
            x = sp.ids(int(i))
            start = max(int(sp.prompt_lens[i]), 1)
            e0, e1 = int(sp.legal_examples[i]), int(sp.legal_examples[i + 1])
            where = np.flatnonzero(self.move_starts[x[start:]]) + start
            if len(where) != e1 - e0 or not len(where):
                self.rules_skipped += bool(len(where) or e1 > e0)
                base += len(x)
                continue
            bounds = sp.legal_sets[e0 : e1 + 1]
            vals = sp.legal_values[bounds[0] : bounds[-1]]
            size = np.diff(bounds)
            seg = np.repeat(np.arange(len(size)), size)
            played = np.bincount(seg, weights=vals == x[where][seg], minlength=len(size)) > 0
            if not played.all():  # the move played is not among its legal tokens: not lined up
                self.rules_skipped += 1
                base += len(x)
                continue
            positions.append(base + where - 1)
            values.append(vals)
            sizes.append(size)
            base += len(x)
        if not positions:
            return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64)
        return np.concatenate(positions), np.concatenate(values), np.concatenate(sizes)

    def row_arrays(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, labels, pos = [], [], []
        for i in self.rows[r]:
            x = self.split.ids(int(i))
            lab = x.astype(np.int64)
            lab[: self.split.prompt_lens[i]] = IGNORE_INDEX
            ids.append(x)
            labels.append(lab)
            pos.append(np.arange(len(x)))
        return np.concatenate(ids), np.concatenate(labels), np.concatenate(pos)

    def __call__(self, row_ids: np.ndarray) -> dict[str, Any]:
        import torch

        parts = [self.row_arrays(int(r)) for r in row_ids]
        width = max(len(p[0]) for p in parts)
        width = -(-width // self.multiple) * self.multiple
        n = len(parts)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        # Padding continues the last example's positions: it is never a target and, being at
        # the end of a causal row, nothing real attends to it.
        position_ids = torch.zeros((n, width), dtype=torch.long)
        for b, (x, lab, pos) in enumerate(parts):
            k = len(x)
            input_ids[b, :k] = torch.from_numpy(x.astype(np.int64))
            labels[b, :k] = torch.from_numpy(lab)
            position_ids[b, :k] = torch.from_numpy(pos)
            if k < width:
                position_ids[b, k:] = torch.arange(int(pos[-1]) + 1, int(pos[-1]) + 1 + width - k)
        batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
        if self.move_starts is not None:
            parts = [self.rules_targets(int(r)) for r in row_ids]
            rows = np.concatenate([np.full(len(p[0]), b, np.int64) for b, p in enumerate(parts)])
            where = np.concatenate([p[0] for p in parts])
            values = np.concatenate([p[1] for p in parts]).astype(np.int64)
            sizes = np.concatenate([p[2] for p in parts])
            ids = np.full((len(sizes), int(sizes.max(initial=1))), -1, dtype=np.int64)
            move = np.repeat(np.arange(len(sizes)), sizes)
            col = np.arange(len(values)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
            ids[move, col] = values
            batch["rules_pos"] = torch.from_numpy(np.stack([rows, where.astype(np.int64)], axis=1).reshape(-1, 2))
            batch["rules_ids"] = torch.from_numpy(ids)
        return batch


@dataclasses.dataclass
class EvalPosition:
    prompt: str
    completion: str
    fen: str
    game: str = ""  # the source game, "file:index" (benchmarks/legal_rate.py --exclude-games)


def load_eval_positions(folder: str | Path, limit: int) -> list[EvalPosition]:
    """Held-out next-move positions (``eval`` split, or validation examples with a FEN)."""
    for split in ("eval", "validation"):
        if not split_paths(folder, split):
            continue
        rows = read_rows(folder, split, ["prompt", "completion", "fen", "game"], 0)
        out = [
            EvalPosition(p, c, f, g or "")
            for p, c, f, g in zip(rows["prompt"], rows["completion"], rows["fen"], rows["game"], strict=True)
            if f
        ]
        if out:
            # Spread over the games rather than the first few: a fixed, seeded pick.
            rng = np.random.default_rng(1234)
            idx = sorted(rng.choice(len(out), size=min(limit, len(out)), replace=False).tolist())
            return [out[i] for i in idx]
    return []
