"""What the engine asks of the model: candidate log-probabilities and free text.

:class:`LMScorer` wraps a loaded causal LM. ``score`` gives the log-probability of
each continuation (``" Nf3"``) after a prompt, tokenized *in context*: the text
``prompt + continuation`` is tokenized whole and the continuation's tokens are those
after the part shared with the other candidates, so they are exactly the tokens the
model would write.

Two paths compute the same numbers:

* the fast path (:mod:`engine.fastpath`, used whenever the model supports it):
  per-game KV caches kept between moves (matched by token ids, so takebacks, new
  games and prompts cut to the budget invalidate exactly what changed), all
  candidates in one forward as a token tree, concurrent calls from many games'
  threads gathered into one forward (:mod:`engine.batcher`), CUDA graphs on a GPU;
* the plain path (:meth:`LMScorer.score_plain`): the shared prefix through the
  model once, the candidates in batches of ``score_batch`` on a copy of its cache.
  It is the reference the fast path is tested against, and the fallback for models
  the fast path does not support.
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
from collections.abc import Sequence
from typing import Any

from loguru import logger

from engine.batcher import Batcher
from engine.prompt import Prompt
from engine.tokentree import (
    CandidateTree,
    ContextEncoder,
    common_prefix_len,
    shared_prefix_len,
    split_candidates,
)


class Cancelled(Exception):
    """The caller withdrew the request (time ran out or ``stop``)."""


@dataclasses.dataclass
class Scores:
    logprobs: list[float]  # one per continuation: sum of its token log-probabilities
    n_tokens: list[int]  # tokens scored per continuation
    tokens_evaluated: int  # prefix + candidate tokens through the model (the `nodes` of UCI info)


# Kept for callers of the old private name.
_common_prefix_len = common_prefix_len

FAST_FAILURES_BEFORE_OFF = 3


class LMScorer:
    """Scores and generates with one model; safe to share between threads (games).

    ``fast``: None (default) uses the fast path when the model supports it, False
    never, True insists (an unsupported model raises). ``cache_slots`` is how many
    games' KV caches are kept (give it more than the number of concurrent games);
    ``max_batch`` caps the games scored in one forward; ``cuda_graphs`` None means
    on for CUDA devices; ``gather_ms`` is how long a batch waits for late games;
    ``fuse_linears`` lets the fast path run the projections (NF4 and LoRA included)
    through :mod:`engine.fusedlinear` instead of the modules; ``nf4_chunk_mb`` > 0
    dequantizes NF4 weights in chunks of that size (an L2-cache experiment);
    ``nf4_kernel_rows``: NF4 products of up to that many tokens run through the fused
    dequantize-and-multiply kernel (:mod:`engine.nf4gemm`, CUDA + Triton) where a
    timing at set-up finds it faster than dequantize + product (128 by default; the
    first set-up compiles the kernel's tiles, which Triton then keeps in its cache);
    0 never. ``pipeline``: concurrent games' batches are launched while the previous
    batch still runs on the device (:class:`engine.batcher.Batcher`, pipelined), when
    ``cache_slots`` holds two batches of ``max_batch`` games. ``gather_games``: one
    batch at a time waits up to ``gather_ms`` for that many games' calls (0: as many as
    the last batch had).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str,
        *,
        score_batch: int = 64,
        fast: bool | None = None,
        cache_slots: int = 4,
        max_batch: int = 16,
        cuda_graphs: bool | None = None,
        cache_capacity: int = 1024,
        gather_ms: float = 2.0,
        fuse_linears: bool = True,
        nf4_chunk_mb: float = 0.0,
        nf4_kernel_rows: int = 128,
        pipeline: bool = True,
        gather_games: int = 0,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.window_plies = 0  # the model's board windows (engine_prompt.yaml; set by the loader)
        self.score_batch = score_batch
        self.lock = threading.Lock()  # one model call at a time (fast steps, plain scoring, generate)
        self._tok_lock = threading.Lock()  # HF tokenizers are not safe to call from several threads
        self.encoder = ContextEncoder(tokenizer)
        self.fast_path: Any = None
        self.fast_reason = "disabled (fast=False)"
        self._fast_failures = 0
        if fast is not False:
            from engine.fastpath import FastPath, FastPathUnsupported

            try:
                self.fast_path = FastPath(
                    model, slots=max(cache_slots, 1), capacity=cache_capacity, cuda_graphs=cuda_graphs,
                    fuse_linears=fuse_linears, nf4_chunk_mb=nf4_chunk_mb, nf4_kernel_rows=nf4_kernel_rows,
                )
                self.fast_reason = ""
            except FastPathUnsupported as exc:
                if fast:
                    raise
                self.fast_reason = str(exc)
                logger.info("fast path off: {}", exc)
        max_items = max(1, min(max_batch, cache_slots))
        # Pipelined batches (the next one launched while the device runs the last) need
        # cache slots for both: on when the slots allow two full batches.
        self.pipelined = bool(pipeline and self.fast_path is not None and cache_slots >= 2 * max_items)
        self._batcher: Batcher[Any, list[float]] = Batcher(
            self._run_jobs, max_items=max_items, gather_s=gather_ms / 1000.0, cancelled=Cancelled,
            launch=self._launch_jobs if self.pipelined else None,
            finish=self._finish_jobs if self.pipelined else None,
            ready=_launched_ready if self.pipelined else None,
            gather_items=gather_games,
        )

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        with self._tok_lock:
            return self.encoder.encode(text, add_special_tokens=add_special_tokens)

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.encode(prompt.text, add_special_tokens=prompt.add_special_tokens))

    # -- fast path --------------------------------------------------------------------
    @property
    def fast(self) -> bool:
        """Whether ``score`` goes through the fast path."""
        return self.fast_path is not None

    def reset_cache(self) -> None:
        """Forget every cached game. Never needed for correctness (prompts are matched
        by token ids); frees the slots for new games at once."""
        if self.fast_path is not None:
            with self.lock:
                self.fast_path.reset()

    def warmup(self, *, max_tokens: int = 256, max_games: int = 1) -> int:
        """Capture the CUDA graphs of single-game steps, and with ``max_games`` > 1 of
        steps of up to that many games, now rather than during play (a no-op on a CPU).
        Returns the number of graphs captured."""
        if self.fast_path is None:
            return 0
        with self.lock:
            return int(self.fast_path.warmup(max_tokens=max_tokens, max_games=min(max_games, self._batcher.max_items)))

    def _run_jobs(self, jobs: list[Any]) -> list[Any]:
        with self.lock:
            fp = self.fast_path
            if fp is None:
                raise RuntimeError(f"fast path switched off: {self.fast_reason}")
            return fp.score_jobs(jobs)

    def _launch_jobs(self, jobs: list[Any]) -> Any:
        with self.lock:
            fp = self.fast_path
            if fp is None:
                raise RuntimeError(f"fast path switched off: {self.fast_reason}")
            return fp, fp.launch_jobs(jobs)

    def _finish_jobs(self, handle: Any) -> list[Any]:
        fp, launched = handle
        launched.wait()  # without the lock: the device works, the host waits
        with self.lock:
            return fp.finish(launched)

    def score(self, prompt: Prompt, continuations: Sequence[str], cancel: threading.Event | None = None) -> Scores:
        if not continuations:
            return Scores([], [], 0)
        if self.fast_path is None:
            return self.score_plain(prompt, continuations, cancel)
        with self._tok_lock:
            prefix, suffixes, tree = candidate_job(self.encoder, prompt, continuations)
        logps = self.score_tree(prefix, suffixes, tree, cancel)
        return Scores(logps, [len(s) for s in suffixes], len(prefix) + sum(len(s) for s in suffixes))

    def score_tree(
        self,
        prefix: list[int],
        suffixes: list[list[int]],
        tree: CandidateTree,
        cancel: threading.Event | None = None,
    ) -> list[float]:
        """Log-probabilities of ``prefix + suffixes[i]``'s suffix tokens, as
        :func:`candidate_job` splits a prompt's candidates (``tree`` is the suffixes'
        trie): through the fast path's batches when it is on, else the plain scorer.
        The model server (:mod:`engine.server`) calls this with jobs its clients built."""
        fp = self.fast_path
        if fp is None:
            return self._score_ids([prefix + s for s in suffixes], len(prefix), cancel).logprobs
        from engine.fastpath import Job

        job = Job(prefix, tree, cancel)
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if not fp.fits(job):
            return self._score_ids([prefix + s for s in suffixes], len(prefix), cancel).logprobs
        try:
            return self._batcher.submit(job, cancel)
        except Cancelled:
            raise
        except Exception as exc:
            self._fast_failed(exc)
            return self._score_ids([prefix + s for s in suffixes], len(prefix), cancel).logprobs

    def _fast_failed(self, exc: Exception) -> None:
        self._fast_failures += 1
        logger.warning("fast path failed ({}: {}); scored with the plain path", type(exc).__name__, exc)
        if self._fast_failures >= FAST_FAILURES_BEFORE_OFF and self.fast_path is not None:
            logger.warning("fast path off after {} failures", self._fast_failures)
            self.fast_reason = f"off after {self._fast_failures} failures; last: {type(exc).__name__}: {exc}"
            self.fast_path = None

    # -- plain path -------------------------------------------------------------------
    def score_plain(
        self, prompt: Prompt, continuations: Sequence[str], cancel: threading.Event | None = None
    ) -> Scores:
        """The reference scorer: every ``prompt + continuation`` tokenized whole, the
        shared prefix through the model once, candidates in batches on a copy of its cache."""
        if not continuations:
            return Scores([], [], 0)
        with self._tok_lock:
            full = [
                list(self.tokenizer(prompt.text + c, add_special_tokens=prompt.add_special_tokens).input_ids)
                for c in continuations
            ]
        return self._score_ids(full, shared_prefix_len(full), cancel)

    def _score_ids(self, full: list[list[int]], prefix_len: int, cancel: threading.Event | None) -> Scores:
        import torch

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
        with self._tok_lock:
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            first = self.tokenizer.convert_ids_to_tokens(new[:1])
        # Decoding drops the word-initial space of the first token; put it back so the
        # text reads as it continues the prompt.
        if first and isinstance(first[0], str) and first[0].startswith("\u2581") and not text.startswith(" "):
            text = " " + text
        return text, len(ids) + len(new)


def candidate_job(
    encoder: ContextEncoder, prompt: Prompt, continuations: Sequence[str]
) -> tuple[list[int], list[list[int]], CandidateTree]:
    """A prompt's candidates as the fast path scores them: the shared prefix ids, each
    candidate's suffix ids (``prefix + suffixes[i]`` are the ids of ``prompt.text +
    continuations[i]`` tokenized whole) and the suffixes' trie with its attention mask
    computed, so that the thread (or process) that calls this does that work, not the
    leader of a batched forward."""
    head, tails = encoder.encode_candidates_split(
        prompt.text, continuations, add_special_tokens=prompt.add_special_tokens
    )
    prefix, suffixes = split_candidates(head, tails)
    tree = CandidateTree.build(suffixes)
    tree.ancestry  # noqa: B018 - cached on the tree
    return prefix, suffixes, tree


def cache_kwarg(model: Any) -> str:
    """Name of the KV-cache argument of ``model.forward``.

    transformers renamed ``past_key_values`` to ``cache`` during 5.x; both are served.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _launched_ready(handle: Any) -> bool:
    return bool(handle[1].ready())


def output_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _model_device(model: Any) -> Any:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return "cpu"
