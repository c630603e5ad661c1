"""``mistral-chess train``: QLoRA / LoRA fine-tuning and training from scratch, one loop.

Why a custom loop and not TRL's ``SFTTrainer``: the things this project needs from the
loop are its own --

* exact resume after a kill, with a small checkpoint: the trained tensors only (the
  adapter, not the 4 GB frozen base), optimizer, scheduler, every process's RNG, and
  the step. The data order is a pure function of (seed, step) (:class:`BatchPlan`), so
  nothing about the data loader has to be saved or replayed; ``tests/training``
  checks that a killed-and-resumed run ends bit-identical to an uninterrupted one.
  SIGTERM or SIGINT (a scheduler's stop, a watchdog, Ctrl-C) stops at the next step
  with a checkpoint there, so nothing trained is lost (:class:`StopRequest`);
* an evaluation that generates moves and reads them with the engine's parser every
  N steps, which fits Trainer only as a callback around its generation-free eval loop;
* a memory estimate from the config that refuses a run before any weight is loaded.

Completion-only loss and packing are small here (:mod:`training.data`): labels are
-100 outside completions, packed rows restart ``position_ids`` per example, and the
loss is normalised by the completion tokens of the whole accumulated batch on all
processes (as Trainer's ``num_items_in_batch``). Model, collator and loss call sit in
:mod:`training.modeling` and :meth:`Trainer.forward`, the places a fast path swaps.

Multi-GPU: ``accelerate launch --config_file configs/train/accelerate/ddp.yaml -m
training train --config ...`` (DDP) or ``fsdp_qlora.yaml`` (FSDP; 4-bit weights stored
as bf16 so they can be sharded). Each process takes its own slice of every global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from engine.configtools import dump_yaml, to_dict
from engine.errors import ConfigError
from training.config import TrainConfig
from training.data import (
    IGNORE_INDEX,
    BatchPlan,
    TokenizedSplit,
    load_eval_positions,
    load_examples,
    pack_rows,
    split_paths,
)
from training.errors import CheckpointError, DataError, TrainingError
from training.modeling import BaseLoader

CHECKPOINTS = "checkpoints"
LOG_FILE = "log.jsonl"
CONFIG_FILE = "training_config.yaml"
# Keys that may change between a run and its resumption; any other change is refused.
RESUMABLE_CHANGES = {
    "train.max_steps", "train.num_train_epochs", "train.logging_steps", "train.save_steps", "train.save_total_limit",
    "train.resume", "train.stop_after_steps", "train.check_memory", "train.threads",
    "train.output_dir", "train.save_dtype", "train.compile", "log_level",
}  # fmt: skip
RESUMABLE_PREFIXES = ("eval.",)
# Keys added after checkpoints could already exist, with the values that mean the old
# behaviour: a checkpoint that lacks them was made with these.
ADDED_KEYS: dict[str, Any] = {
    "train.gradient_checkpointing_fraction": 1.0,
    "train.compile": False,
    "fast.enabled": False,
    "fast.liger": "auto",
    "fast.liger_kernels": ["rms_norm", "rope", "swiglu", "fused_linear_cross_entropy"],
}


@dataclasses.dataclass
class TrainState:
    step: int = 0
    tokens: int = 0  # real (non-padding) tokens seen, all processes
    seconds: float = 0.0  # training time before this process started
    # The logging window so far (steps since the last log line), so that a resumed run
    # writes the same log lines as an uninterrupted one.
    window_steps: int = 0
    window_loss: float = 0.0
    window_tokens: float = 0.0
    window_completion_tokens: float = 0.0


def lr_lambda(step: int, *, warmup: int, total: int, kind: str, floor: float) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return floor + (1 - floor) * (1 - progress)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def flat_config(cfg: TrainConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            out[prefix.rstrip(".")] = value

    walk("", to_dict(cfg))
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    old = {**ADDED_KEYS, **old}
    keys = set(old) | set(new)
    return sorted(
        k
        for k in keys
        if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES and not k.startswith(RESUMABLE_PREFIXES)
    )


class StopRequest:
    """SIGTERM and SIGINT, while installed, ask the training loop to stop at the next step
    boundary (a second SIGINT interrupts at once). Installed only in the main thread, where
    Python delivers signals; elsewhere nothing is installed and no request can come."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.name: str | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.name is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.name == "SIGINT":
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name
        logger.warning("{}: stopping at the end of this step (a checkpoint is saved there)", self.name)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, old in self._old.items():
                signal.signal(s, old)


class Trainer:
    def __init__(self, cfg: TrainConfig, *, base_loader: BaseLoader | None = None) -> None:
        self.cfg = cfg
        self.base_loader = base_loader
        self.out = Path(cfg.train.output_dir)
        self.ckpt_root = self.out / CHECKPOINTS

    # -- setup -------------------------------------------------------------------------------------------
    def setup(self) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        cfg = self.cfg
        tc = cfg.train
        self._check_data()
        device = tc.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise TrainingError("train.device is cuda but torch sees no CUDA GPU (use device: cpu or auto)")
        if cfg.quantization.load_in_4bit and device != "cuda" and self.base_loader is None:
            raise TrainingError("quantization.load_in_4bit needs a CUDA GPU; on a CPU set quantization.load_in_4bit=false")
        if tc.threads and device == "cpu":
            torch.set_num_threads(tc.threads)
        self.device_kind = device
        # An accelerate config (accelerate launch) decides mixed precision; alone, train.bf16 does.
        mixed = os.environ.get("ACCELERATE_MIXED_PRECISION") or ("bf16" if device == "cuda" and tc.bf16 else "no")
        if device == "cpu":
            mixed = "no"
        self.acc = Accelerator(cpu=device == "cpu", mixed_precision=mixed)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.main = self.acc.is_main_process
        set_seed(tc.seed)

        self.resume_from = self._find_resume()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.acc.wait_for_everyone()

        from training.modeling import check_memory, hf_config_for, resolve_tokenizer

        # The tokenizer first (rank 0 may train one), then the memory check, then data:
        # all before any weight is loaded.
        if self.main:
            self.tokenizer = resolve_tokenizer(cfg, self.out)
            self.tokenizer.save_pretrained(str(self.out / "tokenizer"))
        self.acc.wait_for_everyone()
        if not self.main:
            self.tokenizer = resolve_tokenizer(cfg, self.out)
        hf_config = hf_config_for(cfg, self.tokenizer)
        check_memory(cfg, hf_config, device)

        self.train_split = load_examples(
            cfg.data.path, "train", self.tokenizer, max_length=cfg.data.max_length, limit=cfg.data.max_train_examples
        )
        if len(self.train_split) == 0:
            raise DataError(
                f"{cfg.data.path}: no training example fits data.max_length={cfg.data.max_length} "
                f"({self.train_split.dropped_too_long} longer ones dropped)"
            )
        if tc.rules_loss_weight > 0:
            if self.train_split.legal_values is None:
                raise DataError(
                    f"train.rules_loss_weight={tc.rules_loss_weight} needs legal tokens in {cfg.data.path}: build it "
                    "with examples.legal_tokens=true and the model's tokenizer (dataset build ... tokenizer=MODEL_DIR)"
                )
            if self.world > 1:
                raise ConfigError("train.rules_loss_weight > 0 runs in one process only (not under torchrun/accelerate)")
        self.rows = pack_rows(self.train_split.lengths, cfg.data.max_length, packing=cfg.data.packing)
        self.plan = BatchPlan(
            len(self.rows), tc.per_device_train_batch_size, world=self.world, rank=self.rank, seed=tc.seed
        )
        self.val_split: TokenizedSplit | None = None
        if split_paths(cfg.data.path, "validation"):
            self.val_split = load_examples(
                cfg.data.path, "validation", self.tokenizer, max_length=cfg.data.max_length, limit=cfg.data.max_eval_examples
            )
        self.eval_positions = load_eval_positions(cfg.data.path, cfg.eval.generation_positions)
        accum = tc.gradient_accumulation_steps
        if tc.max_steps:
            self.total_steps = tc.max_steps
        else:
            self.total_steps = max(1, math.ceil(tc.num_train_epochs * self.plan.per_epoch / accum))
        logger.info(
            "data: {} train examples in {} rows ({:.0%} full; {} dropped as too long), {} validation, "
            "{} eval positions; {} steps = {:.2f} epochs",
            len(self.train_split), len(self.rows), self._fill(), self.train_split.dropped_too_long,
            len(self.val_split) if self.val_split is not None else 0, len(self.eval_positions),
            self.total_steps, self.total_steps * accum / self.plan.per_epoch,
        )  # fmt: skip

        from training.modeling import build_collator, build_model, count_trainable

        self.model = build_model(cfg, self.tokenizer, hf_config, device, base_loader=self.base_loader)
        trainable, total = count_trainable(self.model)
        logger.info("model: {:,} parameters, {:,} trained ({:.2%})", total, trainable, trainable / max(1, total))
        self.params_info = {"total": total, "trainable": trainable}
        # A compiled forward gets one shape: every row padded to data.max_length.
        self.collate = build_collator(
            self.train_split,
            self.rows,
            self.tokenizer,
            width=cfg.data.max_length if tc.compile else 0,
            rules=tc.rules_loss_weight > 0,
        )
        self.optimizer = self._optimizer()
        warmup = tc.warmup_steps or math.ceil(tc.warmup_ratio * self.total_steps)
        import torch.optim.lr_scheduler as sched

        self.scheduler = sched.LambdaLR(
            self.optimizer,
            functools.partial(
                lr_lambda, warmup=warmup, total=self.total_steps, kind=tc.lr_scheduler_type, floor=tc.min_lr_ratio
            ),
        )
        self.model, self.optimizer = self.acc.prepare(self.model, self.optimizer)
        # The training forward, compiled when train.compile says so. Evaluation and generation
        # call the model itself, uncompiled: their shapes change from call to call.
        self.train_forward = self.model
        if tc.compile:
            import torch

            self.train_forward = torch.compile(self.model.forward)
            logger.info("train.compile: the training forward is compiled (the first steps include compiling)")
        # The rules loss's forward: the decoder alone (its logits are made in forward_rules),
        # compiled like the training forward when train.compile says so.
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.rules_base = base  # the causal LM under any peft wrapper: its decoder and lm_head
        self.rules_decoder = base.model
        self._rules_sum = self._ce_sum = 0.0  # this step's (train_step resets them)
        self._rules_moves = 0
        if tc.compile and tc.rules_loss_weight > 0:
            import torch

            self.rules_decoder = torch.compile(base.model.forward)
        self.state = TrainState()
        if self.resume_from is not None:
            self._load_checkpoint(self.resume_from)
        if self.main:
            dump_yaml(cfg, self.out / CONFIG_FILE)
            self._trim_log(self.state.step)

    def _check_data(self) -> None:
        path = self.cfg.data.path
        if not path:
            raise DataError("data.path: give the folder written by `mistral-chess dataset build`")
        if not Path(path).is_dir():
            raise DataError(f"data.path {path!r}: no such folder")
        if not split_paths(path, "train"):
            raise DataError(f"data.path {path!r}: no train-*.parquet files (build it with `mistral-chess dataset build`)")

    def _fill(self) -> float:
        used = float(self.train_split.lengths.sum())
        return used / max(1, len(self.rows) * self.cfg.data.max_length)

    def _optimizer(self) -> Any:
        import torch

        tc = self.cfg.train
        decay: list[Any] = []
        no_decay: list[Any] = []
        for _, p in self.model.named_parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        kwargs: dict[str, Any] = {"lr": tc.learning_rate, "betas": (tc.adam_beta1, tc.adam_beta2), "eps": tc.adam_epsilon}
        if tc.optim == "adamw_torch":
            return torch.optim.AdamW(groups, **kwargs)
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TrainingError(f"train.optim={tc.optim} needs bitsandbytes") from None
        cls = bnb.optim.PagedAdamW8bit if tc.optim == "paged_adamw_8bit" else bnb.optim.AdamW8bit
        return cls(groups, **kwargs)

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _checkpoints(self) -> list[Path]:
        if not self.ckpt_root.is_dir():
            return []
        return sorted(p for p in self.ckpt_root.iterdir() if p.is_dir() and p.name.startswith("step-") and "." not in p.name)

    def _find_resume(self) -> Path | None:
        ckpts = self._checkpoints()
        if not ckpts:
            return None
        if self.cfg.train.resume == "never":
            raise CheckpointError(
                f"{self.out} holds checkpoints of an earlier run ({ckpts[-1].name}); "
                "use another train.output_dir, or train.resume=auto to continue it"
            )
        latest = ckpts[-1]
        state_file = latest / "state.json"
        if not state_file.is_file():
            raise CheckpointError(f"{latest}: incomplete checkpoint (no state.json)")
        saved = json.loads(state_file.read_text())
        changed = config_changes(saved.get("config", {}), flat_config(self.cfg))
        if changed:
            old, new = saved.get("config", {}), flat_config(self.cfg)
            diffs = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:6])
            raise CheckpointError(
                f"{latest} was made with another config ({diffs}); "
                "use the same config to resume, or another train.output_dir for a new run"
            )
        return latest

    def _save_checkpoint(self) -> Path:
        import torch

        from training.modeling import trainable_state

        step = self.state.step
        final = self.ckpt_root / f"step-{step:07d}"
        tmp = self.ckpt_root / f"step-{step:07d}.tmp"
        if self.main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        self.acc.wait_for_everyone()
        torch.save(_rng_state(), tmp / f"rng-rank{self.rank}.pt")
        from training.modeling import using_fsdp

        if using_fsdp():
            self.acc.save_state(str(tmp / "accelerate"))
        elif self.main:
            from safetensors.torch import save_file

            model = self.acc.unwrap_model(self.model)
            save_file({k: v.contiguous().cpu() for k, v in trainable_state(model).items()}, str(tmp / "trainable.safetensors"))
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        if self.main:
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            state = dataclasses.asdict(self.state) | {"config": flat_config(self.cfg), "world": self.world}
            (tmp / "state.json").write_text(json.dumps(state, indent=1))
        self.acc.wait_for_everyone()
        if self.main:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)  # a checkpoint exists only when complete
            limit = self.cfg.train.save_total_limit
            if limit:
                for old in self._checkpoints()[:-limit]:
                    shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
        return final

    def _load_checkpoint(self, path: Path) -> None:
        import torch

        from training.modeling import load_trainable_state, using_fsdp

        saved = json.loads((path / "state.json").read_text())
        if saved.get("world", 1) != self.world:
            raise CheckpointError(
                f"{path} was written by {saved.get('world')} process(es), this run has {self.world}: "
                "the data order differs; resume with the same number of processes"
            )
        if using_fsdp():
            self.acc.load_state(str(path / "accelerate"))
        else:
            from safetensors.torch import load_file

            load_trainable_state(self.acc.unwrap_model(self.model), load_file(str(path / "trainable.safetensors")))
            self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        fields = {f.name for f in dataclasses.fields(TrainState)}
        self.state = TrainState(**{k: v for k, v in saved.items() if k in fields})
        rng_file = path / f"rng-rank{self.rank}.pt"
        if not rng_file.is_file():
            raise CheckpointError(f"{path}: no RNG state for process {self.rank}")
        _set_rng_state(torch.load(rng_file, weights_only=False))
        logger.info("resumed from {} (step {})", path, self.state.step)

    # -- log -------------------------------------------------------------------------------------------------
    def _trim_log(self, step: int) -> None:
        """Drop log lines past the resumed step: the resumed run writes them again."""
        log = self.out / LOG_FILE
        if not log.is_file():
            return
        keep = [line for line in log.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
        log.write_text("".join(line + "\n" for line in keep))

    def log(self, entry: dict[str, Any]) -> None:
        if not self.main:
            return
        entry = {"step": self.state.step, **entry}
        with (self.out / LOG_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    # -- the loop ---------------------------------------------------------------------------------------------
    def _reduce(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        import torch

        t = torch.tensor(values, dtype=torch.float64, device=self.acc.device)
        t = self.acc.reduce(t, reduction="sum")
        return [float(x) for x in t.tolist()]

    def forward(self, batch: dict[str, Any], n_items: Any) -> Any:
        """One micro-batch's loss: completion-token cross-entropy summed and divided by the
        completion tokens of the whole accumulated batch (``n_items``); with the rules loss
        (:meth:`forward_rules`) its weighted share is added."""
        if "rules_pos" in batch:
            ce, rules = self.forward_rules(batch, n_items)
            self._rules_sum += float(rules.detach())
            self._ce_sum += float(ce.detach())
            return ce + self.cfg.train.rules_loss_weight * rules
        with self.acc.autocast():
            out = self.train_forward(**batch, use_cache=False, num_items_in_batch=n_items)
        return out.loss

    def _validation_rules(self, rows: list[Any], mine: list[int], size: int) -> float:
        """The rules loss on the validation split, per move (the mean -log of the mass on legal moves)."""
        import torch

        from training.modeling import build_collator

        assert self.val_split is not None
        collate = build_collator(self.val_split, rows, self.tokenizer, rules=True)
        total, moves = 0.0, 0
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            for i in range(0, len(mine), size):
                batch = {k: v.to(self.acc.device) for k, v in collate(np.array(mine[i : i + size])).items()}
                n = batch["rules_pos"].shape[0]
                if n:
                    one = torch.tensor(1.0, device=self.acc.device)
                    _, rules = self.forward_rules(batch, one, count=False, eager=True)  # shapes vary: no compiled graph
                    total, moves = total + float(rules), moves + n
        self.model.train(was_training)
        return total / moves if moves else float("nan")

    def forward_rules(
        self, batch: dict[str, Any], n_items: Any, *, count: bool = True, eager: bool = False
    ) -> tuple[Any, Any]:
        """The cross-entropy as :meth:`forward` computes it, and the rules loss: at each move the
        batch's ``rules_pos`` names, ``-log`` of the probability mass on the first tokens of the
        legal moves (``rules_ids``, -1 padded), summed and divided by ``n_items`` like the
        cross-entropy. One forward of the decoder; logits from its last hidden states."""
        import torch
        import torch.nn.functional as F

        pos, legal = batch["rules_pos"], batch["rules_ids"]
        labels = batch["labels"]
        base = self.rules_base
        with self.acc.autocast():
            decoder = base.model if eager else self.rules_decoder
            hidden = decoder(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
            ).last_hidden_state
            logits = base.lm_head(hidden).float()
        vocab = logits.shape[-1]
        ce = F.cross_entropy(
            logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        ) / n_items
        if pos.shape[0] == 0:
            return ce, ce.new_zeros(())
        at = logits[pos[:, 0], pos[:, 1]]  # (moves, vocab)
        mass = at.gather(1, legal.clamp(min=0)).masked_fill(legal < 0, float("-inf"))
        rules = (torch.logsumexp(at, dim=-1) - torch.logsumexp(mass, dim=-1)).sum() / n_items
        if count:
            self._rules_moves += int(pos.shape[0])
        return ce, rules

    def train_step(self) -> dict[str, float]:
        import torch

        accum = self.cfg.train.gradient_accumulation_steps
        first = self.state.step * accum
        batches = [self.collate(self.plan.rows(first + a)) for a in range(accum)]
        local_items = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
        local_tokens = sum(int(len(self.train_split.ids(int(i)))) for a in range(accum) for r in self.plan.rows(first + a) for i in self.rows[int(r)])
        n_items, tokens = self._reduce([float(local_items), float(local_tokens)])
        n_items_t = torch.tensor(max(n_items, 1.0), device=self.acc.device)
        self.model.train()
        loss_sum = 0.0
        self._rules_sum = self._ce_sum = 0.0
        self._rules_moves = 0
        for a, batch in enumerate(batches):
            batch = {k: v.to(self.acc.device) for k, v in batch.items()}
            sync = a == accum - 1
            ctx = contextlib.nullcontext() if sync or self.world == 1 else self.acc.no_sync(self.model)
            with ctx:
                loss = self.forward(batch, n_items_t)
                # DDP averages gradients over processes; the loss is already a global mean.
                self.acc.backward(loss * self.world)
            loss_sum += float(loss.detach())
        grad_norm = self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.train.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens += int(tokens)
        (loss_global,) = self._reduce([loss_sum])
        out = {"loss": loss_global, "grad_norm": float(grad_norm), "tokens": tokens, "completion_tokens": n_items}
        if self._rules_moves:
            # "loss" stays the cross-entropy, comparable with runs without the rules loss; the
            # rules loss is logged per move (the mean -log of the mass on legal moves).
            out["loss"] = self._ce_sum
            out["rules_loss"] = self._rules_sum * n_items / self._rules_moves
            out["rules_moves"] = self._rules_moves
        return out

    def evaluate(self) -> dict[str, float]:
        from engine.prompt import PromptTemplate
        from training.evaluation import generation_metrics, validation_loss
        from training.modeling import using_fsdp

        ev = self.cfg.eval
        metrics: dict[str, float] = {}
        t0 = time.perf_counter()
        if self.val_split is not None and len(self.val_split):
            rows = pack_rows(self.val_split.lengths, self.cfg.data.max_length, packing=self.cfg.data.packing)
            usable = len(rows) - len(rows) % self.world
            mine = list(range(usable))[self.rank :: self.world]
            from training.modeling import build_collator

            collate = build_collator(self.val_split, rows, self.tokenizer)
            batches = [collate(np.array(mine[i : i + ev.eval_batch_size])) for i in range(0, len(mine), ev.eval_batch_size)]
            metrics.update(
                validation_loss(self.model, batches, self.acc.device, autocast=self.acc.autocast, all_reduce=self._reduce)
            )
            if self.val_split.legal_values is not None:  # a build with legal tokens, whether trained on or not
                metrics["eval_rules_loss"] = self._validation_rules(rows, mine, ev.eval_batch_size)
        if self.eval_positions:
            add = PromptTemplate.load(self.cfg.template).kind == "base"
            metrics.update(
                generation_metrics(
                    self.acc.unwrap_model(self.model) if not using_fsdp() else self.model,
                    self.tokenizer,
                    self.eval_positions,
                    device=self.acc.device,
                    max_new_tokens=ev.max_new_tokens,
                    batch_size=ev.generation_batch_size,
                    add_special_tokens=add,
                    rank=self.rank,
                    world=self.world,
                    synced_gpus=using_fsdp(),
                    autocast=self.acc.autocast,
                    all_reduce=self._reduce,
                )
            )
        metrics["eval_seconds"] = round(time.perf_counter() - t0, 2)
        return metrics

    def run(self) -> dict[str, Any]:
        """Train to ``total_steps``, then write the outputs. SIGTERM or SIGINT (a scheduler's
        stop, Ctrl-C) ends the run at the next step boundary with a checkpoint there, so the
        same command goes on from that step."""
        start_step = self.state.step
        stop = StopRequest()
        with stop.installed():
            stopped = self._loop(stop)
        if stopped is not None:
            return stopped
        return self.finish(self._last_eval, start_step)

    def _loop(self, stop: StopRequest) -> dict[str, Any] | None:
        """The step loop; a summary when a stop request ended it early, else None."""
        from tqdm import tqdm

        tc, ev = self.cfg.train, self.cfg.eval
        t_start = time.perf_counter()
        window_tokens_here = 0.0  # tokens of the window trained by this run (for tokens/s)
        window_time = 0.0  # seconds in train steps (evaluation and saving not counted)
        self._last_eval: dict[str, float] = {}
        bar = tqdm(total=self.total_steps, initial=self.state.step, unit="step", desc="train", disable=not self.main)
        st = self.state
        rules_window: list[float] = []
        while st.step < self.total_steps:
            t_step = time.perf_counter()
            stats = self.train_step()
            window_time += time.perf_counter() - t_step
            bar.update(1)
            st.window_steps += 1
            st.window_loss += stats["loss"]
            st.window_tokens += stats["tokens"]
            st.window_completion_tokens += stats["completion_tokens"]
            window_tokens_here += stats["tokens"]
            if "rules_loss" in stats:
                rules_window.append(stats["rules_loss"])
            step = st.step
            if step % tc.logging_steps == 0 or step == self.total_steps:
                entry = {
                    "loss": st.window_loss / st.window_steps,
                    "grad_norm": stats["grad_norm"],
                    "lr": self.scheduler.get_last_lr()[0],
                    "epoch": round(self.plan.epoch_of(step * tc.gradient_accumulation_steps), 4),
                    "tokens_per_s": round(window_tokens_here / window_time, 1) if window_time > 0 else None,
                    "completion_tokens": st.window_completion_tokens,
                }
                if rules_window:
                    entry["rules_loss"] = round(sum(rules_window) / len(rules_window), 5)
                    rules_window.clear()
                if self.acc.device.type == "cuda":
                    import torch

                    entry["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(self.acc.device) / 1e9, 2)
                self.log(entry)
                bar.set_postfix(loss=f"{entry['loss']:.4f}")
                st.window_steps, st.window_loss, st.window_tokens, st.window_completion_tokens = 0, 0.0, 0.0, 0.0
                window_tokens_here, window_time = 0.0, 0.0
            if (ev.eval_steps and step % ev.eval_steps == 0) or step == self.total_steps:
                self._last_eval = self.evaluate()
                self.log(self._last_eval)
                logger.info("step {}: {}", step, {k: round(v, 4) for k, v in self._last_eval.items()})
            saved = False
            if (tc.save_steps and step % tc.save_steps == 0) or step == self.total_steps:
                self.state.seconds += time.perf_counter() - t_start
                t_start = time.perf_counter()
                self._save_checkpoint()
                saved = True
            if tc.stop_after_steps and step == tc.stop_after_steps:
                logger.warning("train.stop_after_steps={}: killing this process (testing aid)", step)
                os.kill(os.getpid(), signal.SIGKILL)
            # Every process stops at the same step: a request seen by any of them counts.
            if step < self.total_steps and self._reduce([1.0 if stop.requested else 0.0])[0] > 0:
                self.state.seconds += time.perf_counter() - t_start
                path = self._save_checkpoint() if not saved else self.ckpt_root / f"step-{step:07d}"
                bar.close()
                logger.warning(
                    "{} at step {} of {}: saved {} and stopped; the same command goes on from there",
                    stop.name or "stop request", step, self.total_steps, path,
                )
                return {
                    "output_dir": str(self.out), "steps": step, "stopped_by": stop.name or "request",
                    "checkpoint": str(path), "tokens": st.tokens, "seconds": round(st.seconds, 1),
                }  # fmt: skip
        bar.close()
        self.state.seconds += time.perf_counter() - t_start
        return None

    def finish(self, last_eval: dict[str, float], start_step: int) -> dict[str, Any]:
        from training.modeling import save_for_engine, using_fsdp
        from training.plots import plot_curves

        state_dict = self.acc.get_state_dict(self.model) if using_fsdp() else None
        if self.main:
            model = self.acc.unwrap_model(self.model)
            save_for_engine(model, self.tokenizer, self.cfg, self.out, state_dict=state_dict)
            try:
                plot_curves(self.out / LOG_FILE, self.out)
            except ImportError as exc:  # matplotlib missing: the log holds the same numbers
                logger.warning("no PNG curves ({}); the numbers are in {}", exc, LOG_FILE)
        summary = {
            "output_dir": str(self.out),
            "steps": self.state.step,
            "resumed_at_step": start_step or None,
            "tokens": self.state.tokens,
            "seconds": round(self.state.seconds, 1),
            "parameters": self.params_info,
            "final_eval": last_eval,
            "engine": f"mistral-chess uci --model {self.out}",
        }
        if self.main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        self.acc.wait_for_everyone()
        return summary


def _rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train as ``cfg`` says (continuing from the newest checkpoint); returns a summary."""
    trainer = Trainer(cfg)
    trainer.setup()
    if trainer.state.step >= trainer.total_steps:
        logger.info("already trained to step {} of {}: writing the outputs again", trainer.state.step, trainer.total_steps)
        return trainer.finish({}, trainer.state.step)
    return trainer.run()
