"""Packing, batch order and the collator: rows keep examples apart, every example is used,
processes never share rows, and a packed example is computed as if it were alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import IGNORE_INDEX, BatchPlan, PackedCollator, TokenizedSplit, pack_rows
from training.errors import DataError


def make_split(seqs: list[list[int]], prompt_lens: list[int]) -> TokenizedSplit:
    lengths = np.array([len(s) for s in seqs])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = np.array([t for s in seqs for t in s], dtype=np.int32)
    return TokenizedSplit(tokens, offsets, np.array(prompt_lens, dtype=np.int32))


def test_pack_rows_uses_every_example_once_within_the_limit() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=500)
    rows = pack_rows(lengths, 128, packing=True)
    flat = sorted(int(i) for r in rows for i in r)
    assert flat == list(range(500))
    assert all(lengths[r].sum() <= 128 for r in rows)
    # Best-fit decreasing leaves little room: close to the lower bound of rows.
    assert len(rows) <= int(np.ceil(lengths.sum() / 128) * 1.1) + 1
    assert [list(r) for r in pack_rows(lengths[:3], 128, packing=False)] == [[0], [1], [2]]


def test_batch_plan_is_a_fixed_function_of_seed_and_step() -> None:
    a, b = BatchPlan(50, 4, seed=3), BatchPlan(50, 4, seed=3)
    assert all(np.array_equal(a.rows(k), b.rows(k)) for k in range(40))
    epoch0 = np.concatenate([a.rows(k) for k in range(a.per_epoch)])
    assert len(set(epoch0.tolist())) == len(epoch0) == 48  # no row twice in an epoch
    assert not np.array_equal(a.rows(0), a.rows(a.per_epoch))  # a new order each epoch
    ranks = [BatchPlan(50, 4, world=2, rank=r, seed=3) for r in (0, 1)]
    for k in range(6):
        assert not set(ranks[0].rows(k).tolist()) & set(ranks[1].rows(k).tolist())
    with pytest.raises(DataError, match="cannot fill one batch"):
        BatchPlan(3, 4)


def test_collator_labels_completions_and_restarts_positions() -> None:
    split = make_split([[1, 10, 11, 12], [1, 20, 21]], [3, 2])
    collate = PackedCollator(split, [np.array([0, 1])], pad_id=0, pad_to_multiple_of=8)
    batch = collate(np.array([0]))
    assert batch["input_ids"].tolist() == [[1, 10, 11, 12, 1, 20, 21, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX] * 3 + [12] + [IGNORE_INDEX] * 2 + [21, IGNORE_INDEX]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]


def test_packed_example_sees_only_itself(tiny_model_dir: Path) -> None:
    """Attention stays inside each packed example: the logits of the second example are
    those it gets alone. transformers derives the block mask from the restarting
    position_ids only without an attention mask and without a KV cache, hence
    use_cache=False here as in the trainer (with a cache the examples would see each other)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    a, b = [1, 733, 28749, 13, 28740, 28723, 317], [1, 28705, 28740, 28723, 413, 28781]
    split = make_split([a, b], [5, 4])
    packed = PackedCollator(split, [np.array([0, 1])], pad_id=0)(np.array([0]))
    alone = PackedCollator(split, [np.array([1])], pad_id=0)(np.array([0]))
    with torch.no_grad():
        together = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
        single = model(input_ids=alone["input_ids"], position_ids=alone["position_ids"], use_cache=False).logits
    assert torch.allclose(together[0, len(a) : len(a) + len(b)], single[0, : len(b)], atol=1e-5)
