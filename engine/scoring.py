"""What the engine asks of the model: candidate log-probabilities and free text.

:class:`LMScorer` wraps a loaded causal LM. ``score`` gives the log-probability of
each continuation (``" Nf3"``) after a prompt, tokenized *in context*: the text
``prompt + continuation`` is tokenized whole and the continuation's tokens are those
after the part shared with the other candidates, so they are exactly the tokens the
model would write. The shared prefix goes through the model once; all candidates go
through together (in batches of ``score_batch``) on top of its KV cache.
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
from collections.abc import Sequence
from typing import Any

from engine.prompt import Prompt


class Cancelled(Exception):
    """The caller withdrew the request (time ran out or ``stop``)."""


@dataclasses.dataclass
class Scores:
    logprobs: list[float]  # one per continuation: sum of its token log-probabilities
    n_tokens: list[int]  # tokens scored per continuation
    tokens_evaluated: int  # prefix + candidate tokens through the model (the `nodes` of UCI info)


def _common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        for s in seqs:
            if s[i] != t:
                return i
    return n


class LMScorer:
    """Scores and generates with one model. Calls are serialised by a lock."""

    def __init__(self, model: Any, tokenizer: Any, device: str, *, score_batch: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.score_batch = score_batch
        self.lock = threading.Lock()

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens).input_ids)

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.encode(prompt.text, add_special_tokens=prompt.add_special_tokens))

    def score(self, prompt: Prompt, continuations: Sequence[str], cancel: threading.Event | None = None) -> Scores:
        import torch

        if not continuations:
            return Scores([], [], 0)
        full = [self.encode(prompt.text + c, add_special_tokens=prompt.add_special_tokens) for c in continuations]
        # The shared prefix must leave at least one token per candidate to score.
        prefix_len = min(_common_prefix_len(full), min(len(f) for f in full) - 1)
        prefix_len = max(prefix_len, 1)
        prefix = full[0][:prefix_len]
        suffixes = [f[prefix_len:] for f in full]
        with self.lock, torch.inference_mode():
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            dev = self.device if self.device != "cuda" else _model_device(self.model)
            out = self.model(torch.tensor([prefix], device=dev), use_cache=True)
            first_logp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            cache = output_cache(out)
            results: list[float] = [0.0] * len(suffixes)
            for start in range(0, len(suffixes), self.score_batch):
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                chunk = suffixes[start : start + self.score_batch]
                results[start : start + len(chunk)] = self._score_chunk(cache, prefix_len, first_logp, chunk, dev)
        evaluated = prefix_len + sum(len(s) for s in suffixes)
        return Scores(results, [len(s) for s in suffixes], evaluated)

    def _score_chunk(
        self, cache: Any, prefix_len: int, first_logp: Any, chunk: list[list[int]], dev: Any
    ) -> list[float]:
        import copy

        import torch

        n = len(chunk)
        longest = max(len(s) for s in chunk)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((n, longest), pad, dtype=torch.long, device=dev)
        mask = torch.zeros((n, prefix_len + longest), dtype=torch.long, device=dev)
        mask[:, :prefix_len] = 1
        for i, s in enumerate(chunk):
            ids[i, : len(s)] = torch.tensor(s, device=dev)
            mask[i, prefix_len : prefix_len + len(s)] = 1
        positions = torch.arange(prefix_len, prefix_len + longest, device=dev).unsqueeze(0).expand(n, -1)
        batch_cache = copy.deepcopy(cache)
        batch_cache.batch_repeat_interleave(n)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{cache_kwarg(self.model): batch_cache},
        )
        logp = torch.log_softmax(out.logits.float(), dim=-1)
        scores: list[float] = []
        for i, s in enumerate(chunk):
            total = float(first_logp[s[0]])
            for j in range(1, len(s)):
                total += float(logp[i, j - 1, s[j]])
            scores.append(total)
        return scores

    def generate(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int,
        temperature: float,
        generator_seed: int | None = None,
        cancel: threading.Event | None = None,
    ) -> tuple[str, int]:
        """Free generation after the prompt; returns (text, tokens evaluated)."""
        import torch

        ids = self.encode(prompt.text, add_special_tokens=prompt.add_special_tokens)
        with self.lock, torch.inference_mode():
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            dev = self.device if self.device != "cuda" else _model_device(self.model)
            input_ids = torch.tensor([ids], device=dev)
            kwargs: dict[str, Any] = {
                "max_new_tokens": max_new_tokens,
                "pad_token_id": self.tokenizer.pad_token_id,
                "attention_mask": torch.ones_like(input_ids),
            }
            if temperature > 0:
                if generator_seed is not None:
                    torch.manual_seed(generator_seed)
                kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
            else:
                kwargs.update(do_sample=False)
            out = self.model.generate(input_ids, **kwargs)
        new = out[0, len(ids) :].tolist()
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        # Decoding drops the word-initial space of the first token; put it back so the
        # text reads as it continues the prompt.
        first = self.tokenizer.convert_ids_to_tokens(new[:1])
        if first and isinstance(first[0], str) and first[0].startswith("\u2581") and not text.startswith(" "):
            text = " " + text
        return text, len(ids) + len(new)


def cache_kwarg(model: Any) -> str:
    """Name of the KV-cache argument of ``model.forward``.

    transformers renamed ``past_key_values`` to ``cache`` during 5.x; both are served.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _model_device(model: Any) -> Any:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return "cpu"
