"""Training on the CPU with a tiny random Mistral: the loss falls, the engine loads and
plays the result, a killed run resumes to the same state, bad input is refused early."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import chess
import pytest
import torch
from safetensors.torch import load_file

from engine.config import load_engine_config
from engine.errors import ConfigError
from training.config import load_train_config
from training.errors import CheckpointError, DataError, ResourceError, TrainingError
from training.trainer import train

POSITIONS = [
    chess.STARTING_FEN,
    "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3",  # an open game, White to move
    "4k3/P7/8/8/8/8/8/4K3 w - - 0 1",  # a promotion is among the legal moves
]


def lora_overrides(model: Path, data: Path, out: Path) -> list[str]:
    # lm_head is adapted too: a random 64-wide model's frozen head cannot move its logits
    # far, and the test wants a loss that visibly falls in 30 steps.
    return [
        f"model.path={model}",
        f"data.path={data}",
        f"train.output_dir={out}",
        "data.max_length=128",
        "lora.lora_r=8",
        "lora.lora_alpha=16",
        "lora.lora_dropout=0.1",
        "lora.target_modules=[q_proj,v_proj,lm_head]",
        "eval.eval_steps=15",
        "eval.generation_positions=6",
        "eval.max_new_tokens=4",
        "train.max_steps=30",
        "train.per_device_train_batch_size=2",
        "train.gradient_accumulation_steps=2",
        "train.learning_rate=0.02",
        "train.warmup_steps=3",
        "train.logging_steps=4",  # windows straddle the checkpoints: a resume must continue them
        "train.save_steps=10",
        "train.gradient_checkpointing=true",
        "train.threads=1",
    ]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, train_dataset: Path) -> Path:
    out = tmp_path_factory.mktemp("lora") / "run"
    train(load_train_config(None, lora_overrides(tiny_model_dir, train_dataset, out)))
    return out


def log_entries(run: Path, key: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if key in e]


def test_loss_falls_and_outputs_are_written(lora_run: Path, tiny_model_dir: Path) -> None:
    losses = [e["loss"] for e in log_entries(lora_run, "loss")]
    assert len(losses) == 8  # steps 4, 8, ..., 28 and the last, 30
    assert losses[-1] < losses[0] - 2.0, losses
    evals = log_entries(lora_run, "eval_loss")
    assert [e["step"] for e in evals] == [15, 30]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert {"legal_rate", "exact_move_accuracy"} <= set(evals[-1])
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "training_config.yaml", "log.jsonl", "loss.png", "accuracy.png", "legal_rate.png", "summary.json"):  # fmt: skip
        assert (lora_run / name).is_file(), name
    adapter = json.loads((lora_run / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    assert load_train_config(lora_run / "training_config.yaml").train.max_steps == 30


def play(engine_cfg_overrides: list[str]) -> list[str]:
    from engine.player import Player
    from engine.uci import load_scorer

    cfg = load_engine_config(None, engine_cfg_overrides)
    player = Player(cfg, load_scorer(cfg))
    moves = []
    for fen in POSITIONS:
        board = chess.Board(fen)
        decision = player.choose(board)
        assert decision.move is not None and board.is_legal(decision.move)
        assert decision.source == "model"
        moves.append(board.san(decision.move))
    return moves


def test_engine_plays_with_the_adapter_folder(lora_run: Path, tiny_model_dir: Path) -> None:
    # The output folder alone (the base comes from adapter_config.json) and base + adapter.
    alone = play([f"model.path={lora_run}", "model.device=cpu"])
    both = play([f"model.path={tiny_model_dir}", f"model.adapter={lora_run}", "model.device=cpu"])
    assert alone == both
    plain = play([f"model.path={tiny_model_dir}", "model.device=cpu"])
    assert plain != alone  # the adapter changed what the model prefers


def test_kill_and_resume_reaches_the_same_state(
    lora_run: Path, tiny_model_dir: Path, train_dataset: Path, tmp_path: Path, python_exe: str
) -> None:
    out = tmp_path / "run"
    overrides = lora_overrides(tiny_model_dir, train_dataset, out)
    # A real SIGKILL at step 17, between the checkpoints of steps 10 and 20.
    proc = subprocess.run(
        [python_exe, "-m", "engine.cli", "train", *overrides, "train.stop_after_steps=17"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000010"]
    summary = train(load_train_config(None, overrides))
    assert summary["resumed_at_step"] == 10 and summary["steps"] == 30

    ref, got = lora_run / "checkpoints" / "step-0000030", out / "checkpoints" / "step-0000030"
    a, b = load_file(str(ref / "trainable.safetensors")), load_file(str(got / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    oa = torch.load(ref / "optimizer.pt", weights_only=False)
    ob = torch.load(got / "optimizer.pt", weights_only=False)
    for i, state in oa["state"].items():
        assert torch.equal(state["exp_avg"], ob["state"][i]["exp_avg"])
        assert torch.equal(state["exp_avg_sq"], ob["state"][i]["exp_avg_sq"])
        assert torch.equal(state["step"], ob["state"][i]["step"])
    assert json.loads((got / "state.json").read_text())["step"] == 30

    def losses(run: Path) -> list[tuple[int, float]]:
        return [(e["step"], e["loss"]) for e in log_entries(run, "loss")]

    assert losses(out) == losses(lora_run)  # the log was trimmed at step 10 and written again


def test_sigterm_saves_a_checkpoint_and_the_run_goes_on_from_it(
    lora_run: Path, tiny_model_dir: Path, train_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.trainer import Trainer

    out = tmp_path / "run"
    overrides = lora_overrides(tiny_model_dir, train_dataset, out)
    step_once = Trainer.train_step

    def step_and_signal(self: Trainer) -> dict[str, float]:
        stats = step_once(self)
        if self.state.step == 13:  # between the checkpoints of steps 10 and 20
            os.kill(os.getpid(), signal.SIGTERM)
        return stats

    monkeypatch.setattr(Trainer, "train_step", step_and_signal)
    before = signal.getsignal(signal.SIGTERM)
    summary = train(load_train_config(None, overrides))
    assert summary["stopped_by"] == "SIGTERM" and summary["steps"] == 13
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000010", "step-0000013"]
    assert not (out / "summary.json").exists()  # no final outputs: the run is not done

    monkeypatch.setattr(Trainer, "train_step", step_once)
    summary = train(load_train_config(None, overrides))
    assert summary["resumed_at_step"] == 13 and summary["steps"] == 30
    ref, got = lora_run / "checkpoints" / "step-0000030", out / "checkpoints" / "step-0000030"
    a, b = load_file(str(ref / "trainable.safetensors")), load_file(str(got / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_config_is_refused(lora_run: Path, tiny_model_dir: Path, train_dataset: Path) -> None:
    overrides = lora_overrides(tiny_model_dir, train_dataset, lora_run)
    with pytest.raises(CheckpointError, match=r"train.learning_rate: 0.02 -> 0.05"):
        train(load_train_config(None, [*overrides, "train.learning_rate=0.05"]))
    with pytest.raises(CheckpointError, match="holds checkpoints"):
        train(load_train_config(None, [*overrides, "train.resume=never"]))


def test_bad_input_is_refused_before_training(tmp_path: Path, tiny_model_dir: Path, train_dataset: Path) -> None:
    base = lora_overrides(tiny_model_dir, train_dataset, tmp_path / "run")
    with pytest.raises(ConfigError, match="unknown config key train.max_step "):
        load_train_config(None, [*base, "train.max_step=3"])
    with pytest.raises(DataError, match="no such folder"):
        train(load_train_config(None, [*base, f"data.path={tmp_path / 'missing'}"]))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no train"):
        train(load_train_config(None, [*base, f"data.path={empty}"]))
    with pytest.raises(DataError, match="no training example fits"):
        train(load_train_config(None, [*base, "data.max_length=16"]))
    with pytest.raises(TrainingError, match="needs a CUDA GPU"):
        train(load_train_config(None, [*base, "quantization.load_in_4bit=true"]))
    # Going on training a pretrained model with a newly trained BPE would read its embeddings
    # with the wrong ids.
    with pytest.raises(ConfigError, match="chess-bpe trains a new tokenizer"):
        load_train_config(None, [*base, "model.tokenizer=chess-bpe"])
    # The bundled model embeds 4,096 tokens; the Mistral tokenizer has 32,000.
    bundled = Path(__file__).resolve().parents[2] / "engine" / "data" / "bundled-model"
    with pytest.raises(TrainingError, match="it is not this model's tokenizer"):
        train(load_train_config(None, [*base, f"model.path={bundled}", f"model.tokenizer={tiny_model_dir}"]))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_memory_check_refuses_a_model_that_cannot_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import MistralConfig

    from training.modeling import check_memory, estimate_memory

    cfg = load_train_config(None, ["model.path=some/7b", "data.max_length=512", "train.per_device_train_batch_size=4"])
    seven_b = MistralConfig()
    qlora = load_train_config(None, ["model.path=some/7b", "quantization.load_in_4bit=true", "data.max_length=512"])
    est = estimate_memory(qlora, seven_b)
    assert 3.5e9 < est.weights < 6e9  # NF4 7B: about 4 GB of weights
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=0: (16 * 1024**3, 16 * 1024**3))
    with pytest.raises(ResourceError, match="does not fit.*load_in_4bit"):
        check_memory(cfg, seven_b, "cuda")  # a 16 GB GPU: bf16 7B weights alone are 13.5 GiB
    assert check_memory(qlora, seven_b, "cuda") is not None


def test_scratch_model_with_chess_tokenizer(tmp_path: Path, train_dataset: Path) -> None:
    out = tmp_path / "scratch"
    overrides = [
        "model.init=scratch",
        "model.tokenizer=chess-bpe",
        "model.tokenizer_vocab_size=400",
        "model.hidden_size=32",
        "model.num_hidden_layers=2",
        "model.num_attention_heads=4",
        "model.num_key_value_heads=2",
        "model.intermediate_size=64",
        "model.max_position_embeddings=256",
        "lora.enabled=false",
        f"data.path={train_dataset}",
        "data.max_length=128",
        f"train.output_dir={out}",
        "train.max_steps=12",
        "train.per_device_train_batch_size=4",
        "train.gradient_accumulation_steps=1",
        "train.learning_rate=0.01",
        "train.save_steps=6",
        "train.save_dtype=bfloat16",
        "train.logging_steps=3",
        "eval.eval_steps=0",
        "eval.generation_positions=4",
        "eval.max_new_tokens=3",
    ]
    summary = train(load_train_config(None, overrides))
    assert summary["parameters"]["trainable"] == summary["parameters"]["total"]
    assert "legal_rate" in summary["final_eval"]  # the batched generation ran before the save...
    assert json.loads((out / "tokenizer.json").read_text())["padding"] is None  # ...and left no padding in the file
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    weights = load_file(str(out / "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in weights.values())
    losses = [e["loss"] for e in log_entries(out, "loss")]
    assert losses[-1] < losses[0]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok) == 400 and tok.convert_ids_to_tokens(tok(" Nf3").input_ids) == ["<s>", "ĠNf3"]
    play([f"model.path={out}", "model.device=cpu"])
    # The step-12 checkpoint exported as an engine folder holds the weights the run saved at its end.
    from training.modeling import export_checkpoint

    exported = tmp_path / "exported"
    export_checkpoint(out, out / "checkpoints" / "step-0000012", exported)
    again = load_file(str(exported / "model.safetensors"))
    assert again.keys() == weights.keys()
    assert all(torch.equal(again[k], weights[k]) for k in weights)
    play([f"model.path={exported}", "model.device=cpu"])
    # Exporting again over an earlier export (a resumed evaluation) replaces it whole.
    (exported / "stale.txt").write_text("from an earlier export")
    export_checkpoint(out, out / "checkpoints" / "step-0000012", exported)
    assert not (exported / "stale.txt").exists() and (exported / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("exported")) == ["exported"]
    # Continuing with more steps picks up the checkpoint of step 12.
    more = train(load_train_config(None, [*overrides, "train.max_steps=15"]))
    assert more["resumed_at_step"] == 12 and more["steps"] == 15


def test_merge_gives_the_same_model(lora_run: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from training.merge import merge_adapter

    merged_dir = merge_adapter(lora_run, tmp_path / "merged", dtype="float32")
    assert (merged_dir / "model.safetensors").is_file() and not (merged_dir / "adapter_config.json").exists()
    ids = torch.tensor([[1, 733, 28749, 13, 28740, 28723]])
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(lora_run)).eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft(ids).logits, atol=1e-4)
    play([f"model.path={merged_dir}", "model.device=cpu"])
    with pytest.raises(TrainingError, match="not an adapter folder"):
        merge_adapter(tiny_model_dir, tmp_path / "x")
