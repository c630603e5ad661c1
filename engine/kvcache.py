"""Per-game KV caches for the fast path: which cache slot serves a prompt, and what it holds.

A slot holds the keys and values of one token sequence (a game's prompt prefix)
at storage index = position. A new prompt is matched by *token ids* against every
slot: the longest common prefix is reused and everything after it is recomputed.
That one rule covers every way a game can move on:

* the next move of the same game: the slot's ids are a prefix of the new prompt,
  only the new tokens (a few a ply) go through the model;
* a takeback, a jump to another position, a new game with the same headers, a
  prompt cut to the token budget that restarts from a FEN: the common prefix
  ends where the texts first differ, the slot is cut back there;
* a ``ucinewgame`` or a game whose headers differ: the common prefix is the
  header part or nothing.

Keys and values at positions below the common prefix depend only on the tokens
there, so a reused entry is always the entry a fresh prompt would compute. A slot
that would be cut back while another game may still own it is not overwritten: the
prompt takes the least recently used slot and the shared part is copied over (a
device-to-device copy, far cheaper than recomputing it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np


def lcp(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two id arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


@dataclasses.dataclass
class SlotPlan:
    slot: int
    reuse: int  # cached tokens kept (positions 0..reuse-1)
    copy_from: int | None = None  # slot whose first `reuse` entries are copied in first


class SlotTable:
    """Bookkeeping of the token ids each cache slot holds (no tensors here)."""

    def __init__(self, n_slots: int) -> None:
        if n_slots < 1:
            raise ValueError(f"cache slots must be >= 1, not {n_slots}")
        self.n_slots = n_slots
        self.ids: list[np.ndarray] = [np.zeros(0, dtype=np.int64) for _ in range(n_slots)]
        # The same ids as one matrix (a row per slot, -1 past its length), so a prompt is
        # matched against every slot in one comparison rather than one call per slot.
        self._mat = np.full((n_slots, 256), -1, dtype=np.int64)
        self._lens = np.zeros(n_slots, dtype=np.int64)
        self.last_used = [0] * n_slots
        self._tick = 0
        self.reused_tokens = 0  # statistics: tokens served from cache
        self.fed_tokens = 0  # prefix tokens that went through the model

    def clear(self) -> None:
        for s in range(self.n_slots):
            self.forget(s)

    def forget(self, slot: int) -> None:
        self.ids[slot] = np.zeros(0, dtype=np.int64)
        self._mat[slot] = -1
        self._lens[slot] = 0
        self.last_used[slot] = 0

    def matches(self, prefix: np.ndarray, slots: Sequence[int]) -> list[int]:
        """``lcp(self.ids[s], prefix)`` for each of ``slots``, in one comparison."""
        m = min(len(prefix), self._mat.shape[1])
        if m == 0:
            return [0] * len(slots)
        idx = np.asarray(slots, dtype=np.int64)
        eq = self._mat[idx, :m] == prefix[:m]  # false past a slot's length (-1 is no token id)
        first = np.where(eq.all(axis=1), m, eq.argmin(axis=1))
        return np.minimum(first, self._lens[idx]).tolist()

    def plan(self, prefix: np.ndarray, taken: Sequence[int] | set[int], *, keep_last: int = 1) -> SlotPlan:
        """Choose the slot for a prompt whose shared prefix is ``prefix``.

        ``taken`` are slots already serving another prompt in the same forward.
        At least ``keep_last`` tokens of the prefix are recomputed (the last prefix
        token's output is needed to score the first candidate token).
        """
        free = [s for s in range(self.n_slots) if s not in taken]
        if not free:
            raise RuntimeError("no free cache slot in this step")
        cap = max(0, len(prefix) - keep_last)
        match = dict(zip(free, self.matches(prefix, free), strict=True))
        # Longest match; among equals the one that is a pure extension, then the most recent.
        best = max(free, key=lambda s: (match[s], match[s] == len(self.ids[s]), self.last_used[s]))
        self._tick += 1
        if match[best] == len(self.ids[best]):
            chosen, reuse_from = best, None
        else:
            # Cutting `best` back could destroy another game's cache: write into the
            # least recently used slot (an empty one first) instead.
            victim = min(free, key=lambda s: (len(self.ids[s]) > 0, self.last_used[s]))
            if victim == best or match[victim] >= match[best]:
                chosen, reuse_from = victim, None
            else:
                chosen, reuse_from = victim, best
        reuse = min(match[best] if reuse_from is not None else match[chosen], cap)
        self.last_used[chosen] = self._tick
        return SlotPlan(chosen, reuse, reuse_from)

    def commit(self, slot: int, prefix: np.ndarray) -> None:
        n = len(prefix)
        if n > self._mat.shape[1]:
            width = -(-n // 256) * 256
            grown = np.full((self.n_slots, width), -1, dtype=np.int64)
            grown[:, : self._mat.shape[1]] = self._mat
            self._mat = grown
        self.ids[slot] = prefix.copy()
        self._mat[slot, :n] = prefix
        self._mat[slot, n:] = -1
        self._lens[slot] = n


class KVStore:
    """Key and value tensors of every layer: ``(slots, capacity + pad, kv_heads, head_dim)``.

    Index ``capacity`` of slot 0 is a write-only scratch row: padding tokens of a
    bucketed forward write there, and no mask ever lets a query read it.
    """

    PAD = 16

    def __init__(
        self, *, layers: int, slots: int, kv_heads: int, head_dim: int, capacity: int, dtype: Any, device: Any
    ) -> None:
        self.layers = layers
        self.slots = slots
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = device
        self.capacity = 0
        self.generation = 0  # bumped whenever the tensors are replaced (captured graphs must go)
        self.k: list[Any] = []
        self.v: list[Any] = []
        self._allocate(capacity)

    @property
    def alloc(self) -> int:
        return self.capacity + self.PAD

    @property
    def trash_index(self) -> int:
        """Flat row index (slot 0, storage ``capacity``) for padding writes."""
        return self.capacity

    def bytes_per_slot_token(self) -> int:
        import torch

        return 2 * self.layers * self.kv_heads * self.head_dim * torch.tensor([], dtype=self.dtype).element_size()

    def _allocate(self, capacity: int) -> None:
        import torch

        old_k, old_v, old_cap = self.k, self.v, self.capacity
        shape = (self.slots, capacity + self.PAD, self.kv_heads, self.head_dim)
        self.k = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        self.v = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        keep = min(old_cap, capacity)
        for i in range(len(old_k)):
            self.k[i][:, :keep].copy_(old_k[i][:, :keep])
            self.v[i][:, :keep].copy_(old_v[i][:, :keep])
        self.capacity = capacity
        self.generation += 1

    def grow(self, capacity: int) -> None:
        if capacity > self.capacity:
            self._allocate(capacity)

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        if n <= 0 or src == dst:
            return
        for i in range(self.layers):
            self.k[i][dst, :n].copy_(self.k[i][src, :n])
            self.v[i][dst, :n].copy_(self.v[i][src, :n])
