"""Candidate tokens for the fast path: tokenized in context, then shared as a tree.

Two jobs, both exact with respect to the plain scorer:

* :class:`ContextEncoder` gives, for a prompt and its candidate continuations, the
  token ids of ``prompt + continuation`` as the tokenizer writes them *whole* (so a
  candidate's tokens are exactly those the model would write after the prompt). It
  gets there without re-tokenizing the whole prompt once per candidate: the prompt
  is tokenized once (and remembered), and only a short tail of it, cut at a space
  (a word boundary for SentencePiece and byte-level BPE tokenizers alike), is
  tokenized again with each candidate. The cut is checked against the prompt's own
  tokens; when the check fails the encoder tokenizes every text whole.
* :class:`CandidateTree` folds the candidates' suffix tokens into a trie: legal moves
  share first tokens (``▁N``, ``▁e``...), so the model reads each shared token once.
  Only proper prefixes of the suffixes are fed to the model (the last token of a
  candidate is predicted, never read).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix shared by every sequence."""
    first = list(seqs[0])
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        s = list(s)
        if s[:n] == first[:n]:
            continue
        lo, hi = 0, n  # s[:lo] == first[:lo], s[:hi] != first[:hi]
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if s[lo:mid] == first[lo:mid]:
                lo = mid
            else:
                hi = mid
        n = lo
    return n


def shared_prefix_len(full: Sequence[Sequence[int]]) -> int:
    """The plain scorer's split: shared tokens, leaving each candidate at least one to score."""
    n = min(common_prefix_len(full), min(len(f) for f in full) - 1)
    return max(n, 1)


def split_candidates(head: list[int], tails: Sequence[list[int]]) -> tuple[list[int], list[list[int]]]:
    """(shared prefix, suffixes) of the sequences ``head + tails[i]``, split as
    :func:`shared_prefix_len` splits them, computed on the tails alone."""
    n = max(min(len(head) + common_prefix_len(tails), len(head) + min(len(t) for t in tails) - 1), 1)
    k = n - len(head)
    if k < 0:  # the split falls inside the head (short texts only)
        full = [head + t for t in tails]
        return full[0][:n], [f[n:] for f in full]
    return head + tails[0][:k], [t[k:] for t in tails]


class ContextEncoder:
    """Tokenizes prompts (remembering the last few) and candidates in context."""

    def __init__(self, tokenizer: Any, *, remember: int = 64, tail_chars: int = 12) -> None:
        self.tokenizer = tokenizer
        self.remember = remember
        self.tail_chars = tail_chars
        self._memo: collections.OrderedDict[tuple[str, bool], tuple[int, ...]] = collections.OrderedDict()
        self.whole_fallbacks = 0  # calls where the tail check failed and every text was tokenized whole
        self.grown = 0  # prompts tokenized as an earlier prompt's tokens plus a new tail
        self._backend = self._checked_backend(tokenizer)

    @staticmethod
    def _checked_backend(tokenizer: Any) -> Any:
        """A fast tokenizer's Rust tokenizer, called directly (a few times faster on the
        short texts of a move than the transformers wrapper), when it gives the
        wrapper's ids on a probe text with and without special tokens; else None."""
        backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        if backend is None or not hasattr(backend, "encode_batch_fast"):
            return None
        probe = ['[Event "?"]\n\n1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 4. O-O Nf6 5. Re1 b5 6. Bb3 d6 *', " exd8=Q+ 1/2-1/2"]
        try:
            for special in (False, True):
                want = [list(x) for x in tokenizer(probe, add_special_tokens=special).input_ids]
                got = [list(e.ids) for e in backend.encode_batch_fast(probe, add_special_tokens=special)]
                if got != want:
                    return None
        except Exception:  # noqa: BLE001 - any trouble: the wrapper it is
            return None
        return backend

    def _ids(self, text: str, add_special_tokens: bool) -> list[int]:
        return self._encode_many([text], add_special_tokens=add_special_tokens)[0]

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        key = (text, add_special_tokens)
        ids = self._memo.get(key)
        if ids is None:
            ids = self._encode_grown(text, add_special_tokens) or tuple(self._ids(text, add_special_tokens))
            self._memo[key] = ids
            if len(self._memo) > self.remember:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(key)
        return list(ids)

    def _encode_grown(self, text: str, add_special_tokens: bool) -> tuple[int, ...] | None:
        """A game's prompt grows by a few moves: reuse the tokens of an earlier prompt up
        to a checked cut at a space, and tokenize only the rest."""
        for (old, special), old_ids in reversed(self._memo.items()):
            if special != add_special_tokens or len(old) < 4 * self.tail_chars:
                continue
            cut = old.rfind(" ", 0, len(old) - self.tail_chars)
            if cut <= 0 or not text.startswith(old[:cut]) or len(text) <= cut:
                continue
            old_tail = self._ids(old[cut:], False)
            k = len(old_ids) - len(old_tail)
            if not old_tail or k <= 0 or list(old_ids[k:]) != list(old_tail):
                continue
            self.grown += 1
            return tuple(old_ids[:k]) + tuple(self._ids(text[cut:], False))
        return None

    def _encode_many(self, texts: list[str], *, add_special_tokens: bool) -> list[list[int]]:
        if self._backend is not None:
            return [list(e.ids) for e in self._backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]
        return [list(x) for x in self.tokenizer(texts, add_special_tokens=add_special_tokens).input_ids]

    def encode_candidates(self, text: str, continuations: Sequence[str], *, add_special_tokens: bool) -> list[list[int]]:
        """Token ids of ``text + c`` for every continuation, as whole-text tokenization gives them."""
        head, tails = self.encode_candidates_split(text, continuations, add_special_tokens=add_special_tokens)
        return [head + t for t in tails]

    def encode_candidates_split(
        self, text: str, continuations: Sequence[str], *, add_special_tokens: bool
    ) -> tuple[list[int], list[list[int]]]:
        """:meth:`encode_candidates` as ``(head, tails)``: ``head + tails[i]`` are the ids
        of ``text + continuations[i]``. ``head`` is the prompt's tokens before its checked
        tail (empty when every text was tokenized whole), so a caller can split off the
        shared prefix without copying the prompt's tokens once per candidate."""
        prompt_ids = self.encode(text, add_special_tokens=add_special_tokens)
        cut = text.rfind(" ", 0, max(0, len(text) - self.tail_chars))
        if cut > 0:
            tail = text[cut:]
            tail_ids = self.encode(tail, add_special_tokens=False)
            k = len(prompt_ids) - len(tail_ids)
            if tail_ids and k > 0 and prompt_ids[k:] == tail_ids:
                return prompt_ids[:k], self._encode_many([tail + c for c in continuations], add_special_tokens=False)
        self.whole_fallbacks += 1
        return [], self._encode_many([text + c for c in continuations], add_special_tokens=add_special_tokens)


@dataclasses.dataclass
class CandidateTree:
    """The candidates' suffix tokens after a shared prefix, as a trie.

    ``node_tokens[j]`` is the token of trie node ``j`` (fed to the model),
    ``node_parent[j]`` its parent node or -1 for the root (the prefix's last token),
    ``node_depth[j]`` its depth (1 for a child of the root). Edges are the scored
    (source, token) pairs: ``edge_src[e]`` is -1 (root) or a node, ``edge_token[e]``
    the token predicted. ``cand_edges[i]`` lists candidate ``i``'s edges in order.
    """

    node_tokens: list[int]
    node_parent: list[int]
    node_depth: list[int]
    edge_src: list[int]
    edge_token: list[int]
    cand_edges: list[list[int]]

    @classmethod
    def build(cls, suffixes: Sequence[Sequence[int]]) -> CandidateTree:
        nodes: dict[tuple[int, ...], int] = {}
        node_tokens: list[int] = []
        node_parent: list[int] = []
        node_depth: list[int] = []
        edges: dict[tuple[int, int], int] = {}
        edge_src: list[int] = []
        edge_token: list[int] = []
        cand_edges: list[list[int]] = []
        for suffix in suffixes:
            path: list[int] = []
            src = -1
            for j, tok in enumerate(suffix):
                e = edges.get((src, tok))
                if e is None:
                    e = len(edge_src)
                    edges[(src, tok)] = e
                    edge_src.append(src)
                    edge_token.append(tok)
                path.append(e)
                if j == len(suffix) - 1:
                    break
                key = tuple(suffix[: j + 1])
                node = nodes.get(key)
                if node is None:
                    node = len(node_tokens)
                    nodes[key] = node
                    node_tokens.append(tok)
                    node_parent.append(src)
                    node_depth.append(j + 1)
                src = node
            cand_edges.append(path)
        return cls(node_tokens, node_parent, node_depth, edge_src, edge_token, cand_edges)

    @functools.cached_property
    def ancestry(self) -> np.ndarray:
        """``ancestry[j, i]``: node ``i`` is node ``j`` or one of its ancestors (the
        trie's attention mask). Cached: the game's own thread computes it before the
        call is queued, so the thread running the batched forward does not."""
        import numpy as np

        m = len(self.node_tokens)
        anc = np.zeros((m, m), dtype=bool)
        for j, parent in enumerate(self.node_parent):
            if parent >= 0:
                anc[j] = anc[parent]
            anc[j, j] = True
        return anc

    def ancestors_or_self(self, node: int) -> list[int]:
        out = []
        while node >= 0:
            out.append(node)
            node = self.node_parent[node]
        return out

    def candidate_logprobs(self, edge_logps: Sequence[float]) -> list[float]:
        return [sum(edge_logps[e] for e in path) for path in self.cand_edges]
