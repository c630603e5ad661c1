"""The fast training mode (``fast.enabled``) on the CPU with a tiny random Mistral:

* a packed row gives every example the loss it has alone (attention stays inside examples);
* the fast trainer's first steps give the same losses as the plain recipe (peft LoRA on
  the same model, the same examples one at a time, AdamW) -- tolerance 1e-4 on losses
  around 10, in float32;
* the frozen base is not upcast, checkpointing covers the configured share of layers;
* bad fast-mode settings are refused with a message naming the key.
Liger's kernels need CUDA: the GPU benchmark (benchmarks/qlora_fast_bench.py) checks them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine.errors import ConfigError
from training.config import load_train_config
from training.data import IGNORE_INDEX, PackedCollator, TokenizedSplit
from training.errors import ResourceError

LOSS_TOLERANCE = 1e-4


def tiny_model(model_dir: Path, dtype: torch.dtype = torch.float32) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa")


def split_of(examples: list[list[int]], prompt_lens: list[int]) -> TokenizedSplit:
    lengths = np.array([len(e) for e in examples])
    offsets = np.zeros(len(examples) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.array([t for e in examples for t in e], dtype=np.int32)
    return TokenizedSplit(tokens, offsets, np.array(prompt_lens, dtype=np.int32))


def token_losses(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of every position's next token (0 where the label is ignored)."""
    logits = model(
        input_ids=batch["input_ids"],
        position_ids=batch.get("position_ids"),
        attention_mask=batch.get("attention_mask"),
        use_cache=False,  # with a cache transformers does not look for packed rows
    ).logits.float()
    labels = batch["labels"][:, 1:]
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels.clamp(min=0), reduction="none"
    )
    return ce * (labels != IGNORE_INDEX)


def test_a_packed_row_gives_each_example_its_own_loss(tiny_model_dir: Path) -> None:
    model = tiny_model(tiny_model_dir).eval()
    rng = np.random.default_rng(0)
    examples = [rng.integers(100, 30000, n).tolist() for n in (9, 14, 6)]
    split = split_of(examples, [0, 0, 0])  # every token is a target: the whole example is compared
    packed = PackedCollator(split, [np.array([0, 1, 2])], pad_id=0)(np.array([0]))
    alone = PackedCollator(split, [np.array([i]) for i in range(3)], pad_id=0)
    with torch.no_grad():
        got = token_losses(model, packed)[0]
        # The same row and positions with an explicit all-ones mask: transformers then does not
        # look for packed sequences, and later examples attend to earlier ones.
        crossing = token_losses(model, {**packed, "attention_mask": torch.ones_like(packed["input_ids"])})[0]
        start = 0
        for i, ex in enumerate(examples):
            want = token_losses(model, alone(np.array([i])))[0, : len(ex) - 1]
            # The packed row's position start + len - 1 predicts the next example's first token:
            # its label is that token, which the example alone does not have.
            mine = got[start : start + len(ex) - 1]
            torch.testing.assert_close(mine, want, atol=1e-5, rtol=1e-5)
            if i > 0:
                assert (crossing[start : start + len(ex) - 1] - want).abs().max() > 1e-3
            start += len(ex)


def fast_overrides(model: Path, data: Path, out: Path) -> list[str]:
    return [
        f"model.path={model}",
        f"data.path={data}",
        f"train.output_dir={out}",
        "data.max_length=128",
        "data.packing=true",
        "lora.lora_r=8",
        "lora.lora_alpha=16",
        "lora.lora_dropout=0.0",  # dropout draws differ between the two loops
        "lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]",
        "eval.eval_steps=0",
        "eval.generation_positions=0",
        "train.max_steps=3",
        "train.per_device_train_batch_size=2",
        "train.gradient_accumulation_steps=2",
        "train.learning_rate=0.01",
        "train.lr_scheduler_type=constant",
        "train.warmup_ratio=0.0",
        "train.max_grad_norm=1.0e9",  # probe3 does not clip
        "train.gradient_checkpointing=true",
        "train.gradient_checkpointing_fraction=0.5",
        "train.threads=1",
        "train.save_steps=0",
        "fast.enabled=true",
    ]


def test_fast_trainer_first_steps_match_the_plain_recipe(tmp_path: Path, tiny_model_dir: Path, train_dataset: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from training.trainer import Trainer

    cfg = load_train_config(None, fast_overrides(tiny_model_dir, train_dataset, tmp_path / "run"))
    trainer = Trainer(cfg)
    trainer.setup()
    accum = cfg.train.gradient_accumulation_steps
    steps = cfg.train.max_steps

    # The plain recipe (shared/probes/probe3.py): peft LoRA on the model as loaded, AdamW,
    # loss = summed completion-token cross-entropy / completion tokens of the step.
    plain = tiny_model(tiny_model_dir)
    torch.manual_seed(cfg.train.seed)  # the trainer seeds LoRA's random A matrices the same way
    plain = get_peft_model(
        plain,
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM"),
    )
    fast_lora = {k: v for k, v in trainer.model.named_parameters() if v.requires_grad}
    plain_lora = {k: v for k, v in plain.named_parameters() if v.requires_grad}
    assert fast_lora.keys() == plain_lora.keys()
    for k, v in plain_lora.items():
        torch.testing.assert_close(fast_lora[k], v, atol=0, rtol=0)
    opt = torch.optim.AdamW(list(plain_lora.values()), lr=cfg.train.learning_rate, weight_decay=0.0)
    split = trainer.train_split

    want: list[float] = []
    for step in range(steps):
        examples = [int(i) for a in range(accum) for r in trainer.plan.rows(step * accum + a) for i in trainer.rows[int(r)]]
        items = sum(len(split.ids(i)) - int(split.prompt_lens[i]) for i in examples)
        loss_sum = 0.0
        for a in range(accum):
            micro = [int(i) for r in trainer.plan.rows(step * accum + a) for i in trainer.rows[int(r)]]
            loss = torch.zeros(())
            for i in micro:  # one example at a time, no packing, no position_ids
                ids = torch.from_numpy(split.ids(i).astype(np.int64))[None]
                labels = ids.clone()
                labels[:, : int(split.prompt_lens[i])] = IGNORE_INDEX
                loss = loss + token_losses(plain, {"input_ids": ids, "labels": labels}).sum() / items
            loss.backward()
            loss_sum += float(loss.detach())
        opt.step()
        opt.zero_grad(set_to_none=True)
        want.append(loss_sum)

    got = [trainer.train_step()["loss"] for _ in range(steps)]
    assert want[-1] < want[0]  # the steps do train (so equal losses are not equal by accident)
    np.testing.assert_allclose(got, want, atol=LOSS_TOLERANCE, rtol=0)


def test_fast_mode_keeps_the_frozen_base_in_its_dtype(tiny_model_dir: Path, tmp_path: Path) -> None:
    from training.modeling import prepare_for_training

    overrides = [o for o in fast_overrides(tiny_model_dir, tmp_path, tmp_path / "run") if not o.startswith("data.path")]
    cfg = load_train_config(None, [*overrides, "model.dtype=bfloat16"])
    model = prepare_for_training(tiny_model(tiny_model_dir, torch.bfloat16), cfg, "cpu")
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16}  # embeddings, norms, lm_head and projections: no fp32 copies
    assert trained == {torch.float32}  # the adapters keep fp32 weights for AdamW
    layers = model.get_base_model().model.layers
    assert [layer.gradient_checkpointing for layer in layers] == [True, False]  # fraction 0.5 of 2 layers


def test_plain_lora_checkpoints_every_layer_without_deprecated_calls(tiny_model_dir: Path, tmp_path: Path) -> None:
    import warnings

    from training.modeling import prepare_for_training

    overrides = [o for o in fast_overrides(tiny_model_dir, tmp_path, tmp_path / "run") if not o.startswith("data.path")]
    cfg = load_train_config(None, [*overrides, "fast.enabled=false", "train.gradient_checkpointing_fraction=1.0"])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model = prepare_for_training(tiny_model(tiny_model_dir), cfg, "cpu")
    assert [layer.gradient_checkpointing for layer in model.get_base_model().model.layers] == [True, True]
    ours = [w for w in seen if "gradient_checkpointing_enable" in str(w.message)]
    assert not ours, [str(w.message) for w in ours]


def test_fast_mode_settings_are_checked(tiny_model_dir: Path, tmp_path: Path) -> None:
    from training.kernels import liger_wanted

    base = [f"model.path={tiny_model_dir}", f"data.path={tmp_path}"]
    with pytest.raises(ConfigError, match="unknown config key fast.ligr"):
        load_train_config(None, [*base, "fast.ligr=true"])
    with pytest.raises(ConfigError, match=r"fast.liger_kernels\[0\]: 'rmsnorm' is not one of 'rms_norm'"):
        load_train_config(None, [*base, "fast.liger_kernels=[rmsnorm]"])
    with pytest.raises(ConfigError, match="fast.liger: 'sometimes' is not a valid"):
        load_train_config(None, [*base, "fast.liger=sometimes"])
    with pytest.raises(ConfigError, match="names a kernel twice"):
        load_train_config(None, [*base, "fast.liger_kernels=[rope,rope]"])
    with pytest.raises(ConfigError, match="gradient_checkpointing_fraction must be in"):
        load_train_config(None, [*base, "train.gradient_checkpointing_fraction=1.5"])
    with pytest.raises(ConfigError, match="train.compile: expected true or false, got 'yes please'"):
        load_train_config(None, [*base, "train.compile=yes please"])
    required = load_train_config(None, [*base, "fast.enabled=true", "fast.liger=true"])
    with pytest.raises(ResourceError, match="fast.liger=true but it needs a CUDA GPU"):
        liger_wanted(required.fast, "cpu")
    auto = load_train_config(None, [*base, "fast.enabled=true"])
    assert auto.fast.liger == "auto" and not liger_wanted(auto.fast, "cpu")


def test_checkpoints_made_before_the_fast_mode_still_resume(tiny_model_dir: Path, tmp_path: Path) -> None:
    from training.trainer import ADDED_KEYS, config_changes, flat_config

    base = [f"model.path={tiny_model_dir}", f"data.path={tmp_path}"]
    before = {k: v for k, v in flat_config(load_train_config(None, base)).items() if k not in ADDED_KEYS}
    assert config_changes(before, flat_config(load_train_config(None, base))) == []
    fast = flat_config(load_train_config(None, [*base, "fast.enabled=true"]))
    assert config_changes(before, fast) == ["fast.enabled"]


def full_overrides(model: Path, data: Path, out: Path) -> list[str]:
    """Full training (no LoRA) of the tiny model: every weight is trained."""
    keep = ("model.path", "data.", "eval.", "train.")
    return [
        *[o for o in fast_overrides(model, data, out) if o.startswith(keep) and "checkpointing" not in o],
        "lora.enabled=false",
        "train.learning_rate=0.001",
        "train.gradient_checkpointing=false",
    ]


def test_fast_mode_for_full_training_keeps_every_weight_trained(tiny_model_dir: Path, tmp_path: Path) -> None:
    from training.modeling import prepare_for_training

    cfg = load_train_config(None, [*full_overrides(tiny_model_dir, tmp_path, tmp_path / "run"), "fast.enabled=true"])
    model = prepare_for_training(tiny_model(tiny_model_dir), cfg, "cpu")
    params = list(model.parameters())
    assert params and all(p.requires_grad for p in params)


def test_compiled_training_forward_gives_the_eager_losses(tmp_path: Path, tiny_model_dir: Path, train_dataset: Path) -> None:
    """``train.compile``: the same steps, with rows padded to max_length and the forward
    compiled, give the eager trainer's losses (padding adds no target and no attention)."""
    from training.trainer import Trainer

    runs = {}
    for compiled in (False, True):
        cfg = load_train_config(
            None,
            [*full_overrides(tiny_model_dir, train_dataset, tmp_path / f"run-{compiled}"), f"train.compile={compiled}"],
        )
        trainer = Trainer(cfg)
        trainer.setup()
        width = {int(trainer.collate(trainer.plan.rows(i))["input_ids"].shape[1]) for i in range(4)}
        runs[compiled] = ([trainer.train_step()["loss"] for _ in range(cfg.train.max_steps)], width)
    (eager, eager_width), (compiled, compiled_width) = runs[False], runs[True]
    assert compiled_width == {128} and eager_width != {128}  # one shape only when compiled
    assert eager[-1] < eager[0]
    np.testing.assert_allclose(compiled, eager, atol=1e-4, rtol=0)
