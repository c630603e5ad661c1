"""The fast path: every legal move of one or many games scored in one forward pass.

:class:`FastPath` runs the model's own modules (embedding, norms, the q/k/v/o and
MLP projections with whatever they are: plain, bitsandbytes NF4, peft LoRA) with
its own attention over its own static KV cache (:mod:`engine.kvcache`):

* **cache kept between moves**: a prompt reuses the longest token-id prefix that a
  cache slot already holds; only the new tokens (a few a ply) are computed.
* **tree attention**: the candidates' tokens after the shared prefix form a trie
  (:class:`engine.tokentree.CandidateTree`); trie nodes are appended to the step's
  tokens, each at rotary position ``prefix_len - 1 + depth``, and a mask lets each
  node see the prefix and its own ancestors only. No copy of the prefix cache per
  candidate, and a token shared by several moves is read once. The trie nodes are
  written to the cache after the prefix and are overwritten by the next step, so
  candidates never pollute the cache.
* **many games in one forward**: each game's tokens are packed into one sequence
  for the projections; for attention the queries are scattered into one row per
  cache slot (grouped-query heads folded into the query axis, so keys and values
  are never repeated) and SDPA runs on all slots at once.
* **CUDA graphs**: on a GPU, steps are padded to a few bucket shapes and each shape
  is captured once as a CUDA graph; a step is then one host-to-device copy of its
  index tensors, one graph replay and one small copy back.

Supported: decoder-only models of the Mistral/Llama family (``model_type`` mistral
or llama, rotary embeddings without dynamic scaling). Anything else is reported by
:func:`unsupported_reason` and served by the plain scorer.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from loguru import logger

from engine.kvcache import KVStore, SlotPlan, SlotTable
from engine.tokentree import CandidateTree

SUPPORTED_MODEL_TYPES = ("mistral", "llama")
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
_BUCKETS = (16, 32, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024, 1280, 1536, 2048)
_S_STEP = 256  # key-length buckets: multiples of this
# Steps of several games use coarser shapes, so that few graphs cover them all and
# warmup(max_games=N) can capture every one up front: tokens in multiples of 64 up to
# 512 (a batch of 4-8 moves is 150-350 tokens: multiples of 128 padded the H200 run's
# steps of 5-6 games, 184 tokens on average, by 28%), of 128 up to 1024, then of 256;
# one game's row padded to a power of two of at least 128 tokens (a move's row is its
# few new prompt tokens and its candidate trie: 30 to 100).
_MULTI_BUCKETS = (128, 192, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048)
_MULTI_ROW_MIN = 128


class FastPathUnsupported(Exception):
    """This model (or this request) cannot go through the fast path."""


def bucket(n: int) -> int:
    for b in _BUCKETS:
        if n <= b:
            return b
    return -(-n // 512) * 512


def multi_bucket(n: int) -> int:
    for b in _MULTI_BUCKETS:
        if n <= b:
            return b
    return _round_up(n, 512)


def base_model(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unsupported_reason(model: Any) -> str | None:
    """Why ``model`` cannot use the fast path, or None when it can."""
    base = base_model(model)
    cfg = getattr(base, "config", None)
    mtype = getattr(cfg, "model_type", None)
    if mtype not in SUPPORTED_MODEL_TYPES:
        return f"model_type {mtype!r} is not one of {SUPPORTED_MODEL_TYPES}"
    core: Any = getattr(base, "model", None)
    for name in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(core, name):
            return f"the model has no model.{name}"
    if not hasattr(base, "lm_head"):
        return "the model has no lm_head"
    rope = getattr(core.rotary_emb, "rope_type", "default")
    if rope not in STATIC_ROPE_TYPES:
        return f"rope type {rope!r} changes with the sequence length"
    layer = core.layers[0]
    for name in ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp"):
        if not hasattr(layer, name):
            return f"decoder layers have no {name}"
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling"):
        if not hasattr(layer.self_attn, name):
            return f"attention has no {name}"
    return None


@dataclasses.dataclass
class Job:
    """One ``score`` call: the shared prefix ids and the candidates' trie."""

    prefix: list[int]
    tree: CandidateTree
    cancel: threading.Event | None = None

    @property
    def fed_candidates(self) -> int:
        return len(self.tree.node_tokens)


@dataclasses.dataclass
class _Row:
    job: Job
    plan: SlotPlan
    n_new: int  # prefix tokens fed (positions reuse..len(prefix)-1)

    @property
    def length(self) -> int:
        return self.n_new + self.job.fed_candidates


@dataclasses.dataclass
class _Step:
    """One forward in flight: its rows and where its result lands."""

    rows: list[_Row]
    idxs: list[int]  # the jobs' indices in their batch
    edge_ranges: list[tuple[int, int]]
    n_edges: int
    out: Any  # the scored edges: a CPU tensor, or a pinned buffer an async copy fills
    event: Any  # a CUDA event recorded after that copy, or None when ``out`` is ready
    timing: Any = None  # (start, end) CUDA timing events with FastPath.time_gpu

    def ready(self) -> bool:
        return self.event is None or bool(self.event.query())


@dataclasses.dataclass
class Launched:
    """A batch of jobs handed to the device: results so far, and the step still running."""

    results: list[list[float] | BaseException]
    step: _Step | None

    def ready(self) -> bool:
        """Whether :meth:`FastPath.finish` would return without waiting for the device."""
        return self.step is None or self.step.ready()

    def wait(self) -> None:
        """Block until the device has finished the step (needs no lock)."""
        if self.step is not None and self.step.event is not None:
            self.step.event.synchronize()


class _Graph:
    """A captured forward for one bucket shape, with its static inputs and output.

    The index tensors and the attention-locality mask share one buffer (the mask's
    bytes after the indices), so a step's inputs go to the device in one copy: each
    torch call of the thread running a step gives up the GIL, and taking it back
    while many games' threads run Python can take milliseconds.

    The host side is double-buffered (two staging buffers for the inputs, two pinned
    buffers the result is copied back into, alternately), so a step of this shape can
    be launched while the previous one still runs: a staging buffer is refilled only
    once the copy that read it has run, and a result buffer is read before it is
    written again (a batch launches at most one step ahead of the one it finishes).
    """

    def __init__(self, n_ints: int, loc_shape: tuple[int, int, int], device: Any, *, pinned: bool) -> None:
        import torch

        n_loc = loc_shape[0] * loc_shape[1] * loc_shape[2]
        words = n_ints + -(-n_loc // 8)
        self.buf = torch.zeros(words, dtype=torch.int64, device=device)
        self.ints = self.buf[:n_ints]
        self.loc = self.buf[n_ints:].view(torch.bool)[:n_loc].view(loc_shape)
        self.stages: list[Any] = []
        self.stage_ints: list[np.ndarray] = []
        self.stage_loc: list[np.ndarray] = []
        for _ in range(2):
            stage = torch.zeros(words, dtype=torch.int64)
            if pinned:
                stage = stage.pin_memory()
            host = stage.numpy()
            self.stages.append(stage)
            self.stage_ints.append(host[:n_ints])
            self.stage_loc.append(host[n_ints:].view(np.bool_)[:n_loc].reshape(loc_shape))
        self.copied: list[Any] = [None, None]  # CUDA events: the input copy from each staging buffer ran
        self.results: list[Any] = []  # pinned result buffers, made after the capture
        self.done: list[Any] = []  # CUDA events: the result copy into each buffer ran
        self.turn = 0
        self.graph: Any = None
        self.out: Any = None
        self.run: Any = None


@dataclasses.dataclass
class FastStats:
    steps: int = 0
    jobs: int = 0
    graph_replays: int = 0
    graphs_captured: int = 0
    eager_steps: int = 0
    prefix_tokens_fed: int = 0
    prefix_tokens_reused: int = 0
    candidate_tokens_fed: int = 0
    # with FastPath.time_gpu: the GPU's own time of the graph steps (input copy, replay,
    # result copy; CUDA events), for telling a device-bound run from a host-bound one
    gpu_ms: float = 0.0
    gpu_timed_steps: int = 0


class FastPath:
    """Scores candidate tries for many games at once over per-game KV caches."""

    def __init__(
        self,
        model: Any,
        *,
        slots: int = 4,
        capacity: int = 1024,
        max_capacity: int | None = None,
        cuda_graphs: bool | None = None,
        max_step_tokens: int = 2048,
        graph_max_tokens: int = 1024,
        graph_max_batch_tokens: int = 2048,
        fuse_linears: bool = True,
        nf4_chunk_mb: float = 0.0,
        nf4_kernel_rows: int = 128,
    ) -> None:
        import torch

        reason = unsupported_reason(model)
        if reason is not None:
            raise FastPathUnsupported(reason)
        self.model = model
        self.base = base_model(model)
        self.core = self.base.model
        self.layers = list(self.core.layers)
        cfg = self.base.config
        attn0 = self.layers[0].self_attn
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads)
        self.group = self.n_heads // self.n_kv
        self.scaling = float(attn0.scaling)
        emb = self.core.embed_tokens.weight
        self.device = emb.device
        self.dtype = emb.dtype
        limit = int(getattr(cfg, "max_position_embeddings", 4096) or 4096)
        window = getattr(cfg, "sliding_window", None)
        if window:
            # Within the window a sliding-window model is an ordinary causal model.
            limit = min(limit, int(window))
        self.max_capacity = min(limit, max_capacity or limit)
        self.max_step_tokens = max_step_tokens
        self.graph_max_tokens = graph_max_tokens
        self.graph_max_batch_tokens = graph_max_batch_tokens
        on_cuda = self.device.type == "cuda"
        # cuda_graphs=True off a GPU runs the graph layout (bucketed static buffers,
        # padding) eagerly, so the tests can check it on a CPU.
        self.use_graphs = on_cuda if cuda_graphs is None else bool(cuda_graphs)
        self._emulate_graphs = self.use_graphs and not on_cuda
        self.slots = SlotTable(slots)
        self.stats = FastStats()
        self.graph_error: str | None = None
        with torch.inference_mode():
            rot = self.core.rotary_emb
            self._inv_freq = rot.inv_freq.detach().to(device=self.device, dtype=torch.float32)
            self._rope_scale = float(getattr(rot, "attention_scaling", 1.0))
            self.store = KVStore(
                layers=len(self.layers),
                slots=slots,
                kv_heads=self.n_kv,
                head_dim=self.head_dim,
                capacity=min(_round_up(capacity, _S_STEP), self.max_capacity),
                dtype=self.dtype,
                device=self.device,
            )
            self._make_rope_table()
        self._graphs: dict[tuple[int, int, int, int], _Graph] = {}
        self._inflight_slots: set[int] = set()
        self.time_gpu = False  # benchmarks: stats.gpu_ms from timing events around each graph step
        self._graph_generation = self.store.generation
        self._pool: Any = None
        self._fused: list[dict[str, Any]] | None = None
        self.fuse_note = "off"
        self.nf4_kernel_note = "off"
        if fuse_linears:
            self._fuse(nf4_chunk_mb, nf4_kernel_rows)

    def _fuse(self, nf4_chunk_mb: float, nf4_kernel_rows: int) -> None:
        """Projections as :class:`engine.fusedlinear.FastLinear` (checked on layer 0), else the modules."""
        import torch

        from engine.fusedlinear import NotFusable, check_layer, fuse_layers, use_nf4_kernel

        if not hasattr(self.layers[0].mlp, "act_fn"):
            self.fuse_note = "declined: the MLP has no act_fn"
            return
        tol = 1e-4 if self.dtype == torch.float32 else 3e-2
        try:
            # Not in inference mode: the modules' weights become views of the grouped
            # tensors and must stay ordinary tensors for callers outside it.
            with torch.no_grad():
                fused = fuse_layers(self.layers, self.dtype, nf4_chunk_mb=nf4_chunk_mb)
            with torch.inference_mode():
                worst = check_layer(self.layers[0], fused[0], self.dtype, self.device, tol=tol)
        except (NotFusable, ImportError, AttributeError, TypeError, RuntimeError) as exc:
            self.fuse_note = f"declined: {type(exc).__name__}: {exc}"
            logger.info("fast path: projections not fused ({})", self.fuse_note)
            return
        self._fused = fused
        chunked = any(f.chunks for f in fused[0].values())
        how = f"NF4 dequantized in {nf4_chunk_mb:g} MB chunks; " if chunked else ""
        self.fuse_note = f"on ({how}layer-0 check: relative difference {worst:.2g})"
        with torch.inference_mode():
            rows = [b for b in _BUCKETS if b <= nf4_kernel_rows]
            self.nf4_kernel_note = use_nf4_kernel(fused, rows, device=self.device, dtype=self.dtype, tol=tol)
            if self.nf4_kernel_note.startswith("on"):
                # the kernel with the adapter in its epilogue, against the modules again
                try:
                    check_layer(self.layers[0], fused[0], self.dtype, self.device, tol=tol)
                except (NotFusable, RuntimeError) as exc:
                    for layer in fused:
                        for f in layer.values():
                            f.kernel_plan = []
                    self.nf4_kernel_note = f"off (layer-0 check with the kernel: {exc})"
                    logger.warning("fast path: fused NF4 kernel {}", self.nf4_kernel_note)
        if self.nf4_kernel_note != "off":
            logger.info("fast path: fused NF4 kernel {}", self.nf4_kernel_note)

    # -- capacity and rope ------------------------------------------------------------
    def _make_rope_table(self) -> None:
        import torch

        pos = torch.arange(self.store.alloc, device=self.device, dtype=torch.float32)
        freqs = pos[:, None] * self._inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self._cos = (emb.cos() * self._rope_scale).to(self.dtype)
        self._sin = (emb.sin() * self._rope_scale).to(self.dtype)
        # rotate_half(x) * sin == swap_halves(x) * sin_signed: one kernel fewer per rotation
        half = self._sin.shape[-1] // 2
        self._sin_signed = torch.cat((-self._sin[:, :half], self._sin[:, half:]), dim=-1)

    def fits(self, job: Job) -> bool:
        """Whether the job's prefix and trie fit in the largest cache this model allows."""
        return len(job.prefix) + job.fed_candidates <= self.max_capacity

    def _ensure_capacity(self, needed: int) -> None:
        if needed <= self.store.capacity:
            return
        new = self.store.capacity
        while new < needed:
            new *= 2
        new = min(_round_up(new, _S_STEP), self.max_capacity)
        if new < needed:
            raise FastPathUnsupported(f"{needed} tokens exceed the fast path's limit of {self.max_capacity}")
        logger.info("fast path: KV cache grows from {} to {} positions per slot", self.store.capacity, new)
        self.store.grow(new)
        self._make_rope_table()

    def reset(self) -> None:
        """Forget every cached game (the tensors stay allocated)."""
        self.slots.clear()

    # -- scoring ------------------------------------------------------------------------
    def score_jobs(self, jobs: Sequence[Job]) -> list[list[float] | BaseException]:
        """Candidate log-probabilities per job (or the exception that job ended with)."""
        return self.finish(self.launch_jobs(jobs))

    def launch_jobs(self, jobs: Sequence[Job]) -> Launched:
        """Start scoring ``jobs``: their last step is left running on the device (a
        CUDA graph replay and an asynchronous copy of its result), so the caller can
        prepare the next batch meanwhile; :meth:`finish` reads the results. A step
        needed before the last one (more jobs than free slots or step tokens) is
        finished here. While a launched step is not finished its cache slots are
        not given to another prompt; device work runs in launch order on one stream,
        so a later step sees the caches that earlier ones write."""
        import torch

        from engine.scoring import Cancelled

        launched = Launched([[] for _ in jobs], None)
        pending = list(range(len(jobs)))
        with torch.inference_mode():
            while pending:
                rows: list[_Row] = []
                idxs: list[int] = []
                taken: set[int] = set(self._inflight_slots)
                tokens = 0
                rest: list[int] = []
                for i in pending:
                    job = jobs[i]
                    if job.cancel is not None and job.cancel.is_set():
                        launched.results[i] = Cancelled()
                        continue
                    if len(taken) >= self.slots.n_slots:
                        rest.append(i)
                        continue
                    prefix = np.asarray(job.prefix, dtype=np.int64)
                    plan = self.slots.plan(prefix, taken)
                    row = _Row(job, plan, len(prefix) - plan.reuse)
                    if rows and tokens + row.length > self.max_step_tokens:
                        rest.append(i)
                        continue
                    taken.add(plan.slot)
                    rows.append(row)
                    idxs.append(i)
                    tokens += row.length
                pending = rest
                if not rows:
                    if pending:
                        exc = RuntimeError(f"no free cache slot: {len(self._inflight_slots)} of "
                                           f"{self.slots.n_slots} serve steps still running")
                        for i in pending:
                            launched.results[i] = exc
                        pending = []
                    continue
                try:
                    step = self._launch_step(rows, idxs)
                except BaseException as exc:
                    for row in rows:
                        self.slots.forget(row.plan.slot)
                    for i in idxs:
                        launched.results[i] = exc
                    continue
                if pending:  # not the last step: finished now
                    self._finish_step(step, launched.results)
                else:
                    launched.step = step
        return launched

    def finish(self, launched: Launched) -> list[list[float] | BaseException]:
        """Wait for a launched batch's last step and return every job's result."""
        import torch

        if launched.step is not None:
            step, launched.step = launched.step, None
            with torch.inference_mode():
                self._finish_step(step, launched.results)
        return launched.results

    def _launch_step(self, rows: list[_Row], idxs: list[int]) -> _Step:
        needed = max(len(r.job.prefix) + r.job.fed_candidates for r in rows)
        if needed > self.store.capacity and self._inflight_slots:
            self._sync()  # growing the cache replaces its tensors: let running steps end first
        self._ensure_capacity(needed)
        for r in rows:
            if r.plan.copy_from is not None:
                self.store.copy_prefix(r.plan.copy_from, r.plan.slot, r.plan.reuse)
        inp = self._inputs(rows)
        T = inp["T"]
        E = len(inp["esrc"])
        key = self.graph_key(T, E, inp["Lp"], needed, len(rows)) if self.use_graphs and self.graph_error is None else None
        out: Any = None
        event: Any = None
        timing: Any = None
        if key is not None:
            try:
                out, event, timing = self._run_graph(key, inp)
            except Exception as exc:  # capture trouble: stay correct, lose the speed
                self.graph_error = f"{type(exc).__name__}: {exc}"
                logger.warning("fast path: CUDA graphs disabled ({}); running eagerly", self.graph_error)
                self._graphs.clear()
                out = None
        if out is None:
            out = self._run_eager(inp, needed)
        step = _Step(rows, idxs, inp["edge_ranges"], E, out, event, timing)
        self._inflight_slots.update(r.plan.slot for r in rows)
        return step

    def _finish_step(self, step: _Step, results: list[list[float] | BaseException]) -> None:
        slots = [r.plan.slot for r in step.rows]
        try:
            if step.event is not None:
                step.event.synchronize()
            edge = step.out[: step.n_edges].tolist()
        except BaseException as exc:
            for slot in slots:
                self.slots.forget(slot)
            for i in step.idxs:
                results[i] = exc
            return
        finally:
            self._inflight_slots.difference_update(slots)
        if step.timing is not None:
            self.stats.gpu_ms += float(step.timing[0].elapsed_time(step.timing[1]))
            self.stats.gpu_timed_steps += 1
        self.stats.steps += 1
        self.stats.jobs += len(step.rows)
        for i, r, (e0, e1) in zip(step.idxs, step.rows, step.edge_ranges, strict=True):
            results[i] = r.job.tree.candidate_logprobs(edge[e0:e1])
            self.slots.commit(r.plan.slot, np.asarray(r.job.prefix, dtype=np.int64))
            self.stats.prefix_tokens_fed += r.n_new
            self.stats.prefix_tokens_reused += r.plan.reuse
            self.stats.candidate_tokens_fed += r.job.fed_candidates

    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def graph_key(self, T: int, E: int, Lp: int, needed: int, n_rows: int) -> tuple[int, int, int, int] | None:
        """The bucket shape (tokens, row length, key length, rows) a step of ``n_rows``
        games with ``T`` tokens, ``E`` scored edges, longest row ``Lp`` and ``needed``
        keys runs in; None when it is too large for a graph (it then runs eagerly)."""
        t_need = max(T, (E - 64 + 1) // 2, 1)  # the edge buffers hold 2 * tokens + 64
        s_b = min(_round_up(needed, _S_STEP), self.store.capacity)
        if n_rows == 1:
            t_b = bucket(t_need)
            return (t_b, t_b, s_b, 1) if t_b <= self.graph_max_tokens else None
        t_b = multi_bucket(t_need)
        if t_b > self.graph_max_batch_tokens:
            return None
        lp_b = max(_MULTI_ROW_MIN, 1 << (Lp - 1).bit_length())
        r_b = min(1 << (n_rows - 1).bit_length(), self.slots.n_slots)
        return (t_b, lp_b, s_b, r_b)

    @property
    def graph_shapes(self) -> int:
        """How many step shapes have a captured graph now."""
        return len(self._graphs)

    # -- step inputs ----------------------------------------------------------------------
    def _inputs(self, rows: list[_Row]) -> dict[str, Any]:
        """Index arrays of one step (numpy, exact sizes)."""
        alloc = self.store.alloc
        lengths = [r.length for r in rows]
        T = sum(lengths)
        Lp = max(lengths)
        ids = np.zeros(T, dtype=np.int64)
        pos = np.zeros(T, dtype=np.int64)
        dst = np.zeros(T, dtype=np.int64)
        col = np.zeros(T, dtype=np.int64)
        row_of = np.zeros(T, dtype=np.int64)
        start = np.zeros(len(rows), dtype=np.int64)
        locs: list[tuple[int, np.ndarray]] = []
        need: list[int] = []
        esrc: list[int] = []
        etok: list[int] = []
        edge_ranges: list[tuple[int, int]] = []
        t0 = 0
        for ri, r in enumerate(rows):
            job, tree = r.job, r.job.tree
            L0 = len(job.prefix)
            reuse, n, m = r.plan.reuse, r.n_new, len(tree.node_tokens)
            lt = n + m
            sl = slice(t0, t0 + lt)
            ids[t0 : t0 + n] = job.prefix[reuse:]
            ids[t0 + n : t0 + lt] = tree.node_tokens
            pos[t0 : t0 + n] = np.arange(reuse, L0)
            pos[t0 + n : t0 + lt] = L0 - 1 + np.asarray(tree.node_depth, dtype=np.int64)
            dst[sl] = r.plan.slot * alloc + reuse + np.arange(lt)
            col[sl] = np.arange(lt)
            row_of[sl] = ri
            start[ri] = reuse
            loc = np.zeros((lt, lt), dtype=bool)
            loc[:n, :n] = np.tri(n, dtype=bool)
            if m:
                loc[n:, :n] = True
                loc[n:, n:] = tree.ancestry
            locs.append((r.plan.slot, loc))
            base_need = len(need)
            need.append(t0 + n - 1)  # the prefix's last token: predicts each candidate's first token
            need.extend(t0 + n + j for j in range(m))
            e0 = len(esrc)
            esrc.extend(base_need + (s + 1) for s in tree.edge_src)  # -1 (root) -> base_need
            etok.extend(tree.edge_token)
            edge_ranges.append((e0, len(esrc)))
            t0 += lt
        return {
            "T": T,
            "Lp": Lp,
            "ids": ids,
            "pos": pos,
            "dst": dst,
            "col": col,
            "row_of": row_of,
            "start": start,
            "locs": locs,
            "need": np.asarray(need, dtype=np.int64),
            "esrc": np.asarray(esrc, dtype=np.int64),
            "etok": np.asarray(etok, dtype=np.int64),
            "edge_ranges": edge_ranges,
        }

    # -- the forward ----------------------------------------------------------------------
    def _forward(
        self,
        ids: Any,
        pos: Any,
        dst: Any,
        qrow: Any,
        rowslot: Any,
        start: Any,
        loc: Any,
        need: Any,
        esrc: Any,
        etok: Any,
        S: int,
    ) -> Any:
        """Log-probabilities of the scored edges. All inputs are device tensors.

        Attention runs over one row per game of the step (``rowslot``: the cache slot
        of each row; padding rows of a graph point anywhere and see key 0 only);
        ``qrow`` puts each token in its row, ``start`` and ``loc`` are per row.
        """
        import torch
        import torch.nn.functional as F

        n_slots = loc.shape[0]
        Lp = loc.shape[1]
        T = ids.shape[0]
        H, KV, G, D = self.n_heads, self.n_kv, self.group, self.head_dim
        mask = self._mask(start, loc, S)
        fused = self._fused
        cos = self._cos[pos][:, None, :]
        # the modules' rotation takes sin, the fused projections' the signed sin
        sin: Any = self._sin[pos][:, None, :] if fused is None else None
        sin_signed: Any = self._sin_signed[pos][:, None, :] if fused is not None else None
        h = self.core.embed_tokens(ids[None])
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            if fused is None:
                x = layer.input_layernorm(h)
                q = attn.q_proj(x).view(T, H, D)
                k = attn.k_proj(x).view(T, KV, D)
                v = attn.v_proj(x).view(T, KV, D)
                q = q * cos + _rotate_half(q) * sin
                k = k * cos + _rotate_half(k) * sin
            else:
                qkv = fused[i]["qkv"](self._norm(layer.input_layernorm, h[0]))
                qk = qkv[:, : (H + KV) * D].view(T, H + KV, D)
                qk = torch.addcmul(qk * cos, _swap_halves(qk), sin_signed)  # q and k rotated together
                q, k = qk[:, :H], qk[:, H:]
                v = qkv[:, (H + KV) * D :].view(T, KV, D)
            kc, vc = self.store.k[i], self.store.v[i]
            kc.view(-1, KV, D).index_copy_(0, dst, k)
            vc.view(-1, KV, D).index_copy_(0, dst, v)
            qp = q.new_zeros(n_slots * Lp + 1, H, D)
            qp.index_copy_(0, qrow, q)
            qf = qp[: n_slots * Lp].view(n_slots, Lp, KV, G, D).permute(0, 2, 3, 1, 4).reshape(n_slots, KV, G * Lp, D)
            # Only the step's games: a copy of their keys and values, not attention
            # over every slot the scorer keeps.
            kr, vr = kc[:, :S].index_select(0, rowslot), vc[:, :S].index_select(0, rowslot)
            o = F.scaled_dot_product_attention(
                qf, kr.transpose(1, 2), vr.transpose(1, 2), attn_mask=mask, scale=self.scaling
            )
            o = o.view(n_slots, KV, G, Lp, D).permute(0, 3, 1, 2, 4).reshape(n_slots * Lp, H * D)
            o = F.pad(o, (0, 0, 0, 1))[qrow]
            if fused is None:
                h = h + attn.o_proj(o[None])
                h = h + layer.mlp(layer.post_attention_layernorm(h))
            else:
                f = fused[i]
                h = h + f["o"](o)[None]
                gu = f["gate_up"](self._norm(layer.post_attention_layernorm, h[0]))
                inter = gu.shape[-1] // 2
                h = h + f["down"](layer.mlp.act_fn(gu[:, :inter]) * gu[:, inter:])[None]
        hn = self.core.norm(h[0, need])
        logits = self.base.lm_head(hn).float()
        lse = torch.logsumexp(logits, dim=-1)
        return logits[esrc, etok] - lse[esrc]

    def _norm(self, norm: Any, x: Any) -> Any:
        """An RMSNorm module's function with torch's fused rms_norm where it has one
        (the same float32 arithmetic as Mistral's and Llama's RMSNorm)."""
        import torch.nn.functional as F

        eps = getattr(norm, "variance_epsilon", None)
        if eps is None or not hasattr(F, "rms_norm") or not type(norm).__name__.endswith("RMSNorm"):
            return norm(x)
        if norm.weight.dtype == x.dtype:
            # one kernel: torch's rms_norm computes a bf16/fp16 input in float32 and scales
            # by the weight before rounding back (Mistral's module rounds, then scales:
            # the two differ by at most one rounding step)
            return F.rms_norm(x, (x.shape[-1],), weight=norm.weight, eps=eps)
        return norm.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)

    def _mask(self, start: Any, loc: Any, S: int) -> Any:
        """Additive mask (slots, 1, group * Lp, S): the committed prefix below ``start``,
        then the step's own tokens as ``loc`` allows."""
        import torch

        n_slots, Lp = loc.shape[0], loc.shape[1]
        keys = torch.arange(S, device=start.device)
        rel = keys[None, :] - start[:, None]
        before = rel < 0
        inside = (rel >= 0) & (rel < Lp)
        local = torch.gather(loc, 2, rel.clamp(0, Lp - 1)[:, None, :].expand(n_slots, Lp, S))
        allowed = before[:, None, :] | (inside[:, None, :] & local)
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=start.device)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return mask[:, None, None].expand(n_slots, 1, self.group, Lp, S).reshape(n_slots, 1, self.group * Lp, S)

    # -- eager and graph runs -------------------------------------------------------------------
    def _run_eager(self, inp: dict[str, Any], needed: int) -> Any:
        import torch

        self.stats.eager_steps += 1
        dev = self.device
        Lp = inp["Lp"]
        rowslot = np.asarray([slot for slot, _ in inp["locs"]], dtype=np.int64)
        loc = np.zeros((len(rowslot), Lp, Lp), dtype=bool)
        for i, (_, lmat) in enumerate(inp["locs"]):
            n = lmat.shape[0]
            loc[i, :n, :n] = lmat
            loc[i, n:, 0] = True
        qrow = inp["row_of"] * Lp + inp["col"]
        S = needed if dev.type == "cpu" else min(_round_up(needed, _S_STEP), self.store.capacity)

        def t(a: np.ndarray) -> Any:
            return torch.from_numpy(a).to(dev)

        return self._forward(
            t(inp["ids"]), t(inp["pos"]), t(inp["dst"]), t(qrow), t(rowslot), t(inp["start"]), t(loc),
            t(inp["need"]), t(inp["esrc"]), t(inp["etok"]), S,
        ).cpu()

    def _layout(self, t_b: int, r_b: int) -> dict[str, slice]:
        e_b = 2 * t_b + 64
        names = (("ids", t_b), ("pos", t_b), ("dst", t_b), ("qrow", t_b), ("need", t_b), ("esrc", e_b), ("etok", e_b),
                 ("rowslot", r_b), ("start", r_b))
        out: dict[str, slice] = {}
        o = 0
        for name, n in names:
            out[name] = slice(o, o + n)
            o += n
        return out

    def _run_graph(self, key: tuple[int, int, int, int], inp: dict[str, Any]) -> tuple[Any, Any, Any]:
        """Replay the graph of ``key`` on ``inp``: (result, event, timing). On a GPU the
        result is a pinned buffer that an asynchronous copy fills and ``event`` marks its
        end; ``timing`` is (start, end) timing events with ``time_gpu``, else None. The
        emulated graphs of a CPU return the result itself and no events."""
        import torch

        if self._graph_generation != self.store.generation:
            self._graphs.clear()
            self._pool = None
            self._graph_generation = self.store.generation
        g = self._graphs.get(key)
        if g is None:
            g = self._capture(key)
        t_b, lp_b, _, r_b = key
        lay = self._layout(t_b, r_b)
        b = g.turn
        g.turn ^= 1
        if g.copied[b] is not None:
            g.copied[b].synchronize()  # the copy that read this staging buffer last time has run
        ints = g.stage_ints[b]
        loc = g.stage_loc[b]
        self._fill_padding(ints, loc, lay, lp_b, r_b)
        T = inp["T"]
        ints[lay["ids"]][:T] = inp["ids"]
        ints[lay["pos"]][:T] = inp["pos"]
        ints[lay["dst"]][:T] = inp["dst"]
        ints[lay["qrow"]][:T] = inp["row_of"] * lp_b + inp["col"]
        need = inp["need"]
        ints[lay["need"]][: len(need)] = need
        E = len(inp["esrc"])
        ints[lay["esrc"]][:E] = inp["esrc"]
        ints[lay["etok"]][:E] = inp["etok"]
        n_rows = len(inp["locs"])
        ints[lay["start"]][:n_rows] = inp["start"]
        for i, (slot, lmat) in enumerate(inp["locs"]):
            ints[lay["rowslot"].start + i] = slot
            n = lmat.shape[0]
            loc[i, :n, :n] = lmat
            loc[i, n:, 0] = True
        start = None
        if self.time_gpu and g.graph is not None:
            start = torch.cuda.Event(enable_timing=True)
            start.record()  # runs when the stream gets here: after the step before this one
        g.buf.copy_(g.stages[b], non_blocking=True)
        self.stats.graph_replays += 1
        if g.graph is None:  # emulated on a CPU
            g.out = g.run()
            return g.out.cpu(), None, None
        if g.copied[b] is None:
            g.copied[b] = torch.cuda.Event()
        g.copied[b].record()
        g.graph.replay()
        if not g.results:
            g.results = [torch.empty(g.out.shape, dtype=g.out.dtype).pin_memory() for _ in range(2)]
            g.done = [torch.cuda.Event() for _ in range(2)]
        g.results[b].copy_(g.out, non_blocking=True)
        timing = None
        if start is not None:  # recorded before `done`, so it has run once `done` has
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            timing = (start, end)
        g.done[b].record()
        return g.results[b], g.done[b], timing

    def _fill_padding(self, ints: np.ndarray, loc: np.ndarray, lay: dict[str, slice], lp_b: int, r_b: int) -> None:
        """Inputs of an empty step: every write goes to the scratch row, every read is harmless."""
        ints[:] = 0
        ints[lay["dst"]] = self.store.trash_index
        ints[lay["qrow"]] = r_b * lp_b
        ints[lay["start"]] = 1  # a padding row sees key 0 only
        loc[:] = False

    def _capture(self, key: tuple[int, int, int, int]) -> _Graph:
        import torch

        t_b, lp_b, s_b, r_b = key
        lay = self._layout(t_b, r_b)
        g = _Graph(lay["start"].stop, (r_b, lp_b, lp_b), self.device, pinned=not self._emulate_graphs)
        self._fill_padding(g.stage_ints[0], g.stage_loc[0], lay, lp_b, r_b)
        g.buf.copy_(g.stages[0])
        v = {name: g.ints[sl] for name, sl in lay.items()}

        def run() -> Any:
            return self._forward(
                v["ids"], v["pos"], v["dst"], v["qrow"], v["rowslot"], v["start"], g.loc, v["need"], v["esrc"],
                v["etok"], s_b,
            )

        g.run = run
        if self._emulate_graphs:
            self._graphs[key] = g
            self.stats.graphs_captured += 1
            return g
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        g.graph, g.out = capture_cuda_graph(run, pool=self._pool)
        self._graphs[key] = g
        self.stats.graphs_captured += 1
        return g

    def warmup_keys(self, *, max_tokens: int = 256, max_games: int = 1) -> list[tuple[int, int, int, int]]:
        """The shapes :meth:`warmup` captures: single-game steps up to ``max_tokens``
        tokens, and steps of 2 to ``max_games`` games whose rows fit the smallest row
        bucket, at every key length up to the current cache capacity."""
        keys: list[tuple[int, int, int, int]] = []
        rows: list[int] = []
        r = 2
        while max_games > 1 and r // 2 < min(max_games, self.slots.n_slots):
            rows.append(min(r, self.slots.n_slots))
            r *= 2
        for s_b in range(_S_STEP, self.store.capacity + 1, _S_STEP):
            keys.extend((t_b, t_b, s_b, 1) for t_b in _BUCKETS if t_b <= min(max_tokens, self.graph_max_tokens))
            for r_b in rows:
                top = min(r_b * _MULTI_ROW_MIN, self.graph_max_batch_tokens)
                keys.extend((t_b, _MULTI_ROW_MIN, s_b, r_b) for t_b in _MULTI_BUCKETS if t_b <= top)
        return keys

    def warmup(self, *, max_tokens: int = 256, max_games: int = 1) -> int:
        """Capture the graphs games will need (:meth:`warmup_keys`) now rather than
        during play. Returns how many were captured."""
        if not (self.use_graphs and self.graph_error is None):
            return 0
        import torch

        if self._graph_generation != self.store.generation:
            self._graphs.clear()
            self._pool = None
            self._graph_generation = self.store.generation
        count = 0
        with torch.inference_mode():
            for key in self.warmup_keys(max_tokens=max_tokens, max_games=max_games):
                if key in self._graphs:
                    continue
                try:
                    self._capture(key)
                except Exception as exc:
                    self.graph_error = f"{type(exc).__name__}: {exc}"
                    logger.warning("fast path: CUDA graphs disabled ({})", self.graph_error)
                    self._graphs.clear()
                    return count
                count += 1
        return count


def capture_cuda_graph(fn: Any, *, pool: Any = None) -> tuple[Any, Any]:
    """``fn`` captured as a CUDA graph (after one run on a side stream, as torch asks),
    and what the captured call returned (its output tensors, refilled by each replay)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


def _swap_halves(x: Any) -> Any:
    import torch

    half = x.shape[-1] // 2
    return torch.cat((x[..., half:], x[..., :half]), dim=-1)


def _rotate_half(x: Any) -> Any:
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step
