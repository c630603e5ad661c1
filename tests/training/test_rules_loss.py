"""The rules loss: legal first tokens written by the build (examples.legal_tokens), read back,
lined up with the moves in packed batches, and the trainer's loss with it."""

from __future__ import annotations

from pathlib import Path

import chess
import numpy as np
import pytest

from engine.errors import ConfigError
from engine.prompt import legal_sans
from training.config import load_dataset_config, load_train_config
from training.examples import ExampleMaker, add_legal_ids, completion_moves
from training.sources import Game, moves_key, replay_uci

torch = pytest.importorskip("torch")


def windows_game() -> Game:
    uci = ["e2e4", "e7e5", "g1f3", "b8c6", "f1b5", "a7a6", "b5c6", "d7c6", "e1g1", "f7f6", "d2d4", "e5d4", "f3d4"]
    sans, _ = replay_uci(uci)
    return Game("mem", 0, sans, "1/2-1/2", moves_key(chess.STARTING_FEN, uci), uci=uci)


def test_each_move_of_a_completion_gets_the_first_tokens_of_its_legal_moves() -> None:
    from training.config import DatasetConfig, ExamplesConfig

    game = windows_game()
    calls: list[str] = []

    def first(word: str) -> int:  # a stand-in tokenizer: the SAN's first letter's code point
        calls.append(word)
        return ord(word[1])

    for kinds in ({"continuation": 1.0}, {"next_move": 1.0}):
        maker = ExampleMaker(DatasetConfig(examples=ExamplesConfig(kinds=kinds, positions_per_game=0, window_plies=4)))
        exs = maker.examples(game)
        add_legal_ids(game, exs, first)
        for e in exs:
            assert e.legal_ids is not None and len(e.legal_ids) == completion_moves(e.completion)
            board = chess.Board()
            for m in game.uci[: e.ply]:
                board.push_uci(m)
            for k, got in enumerate(e.legal_ids):
                sans = legal_sans(board, list(board.legal_moves))
                assert got == sorted({ord(s[0]) for s in sans})
                board.push_uci(game.uci[e.ply + k])
    assert all(w.startswith(" ") for w in calls)


def test_legal_tokens_need_a_tokenized_build() -> None:
    with pytest.raises(ConfigError, match="examples.legal_tokens needs a tokenized build"):
        load_dataset_config(None, ["sources=[{path: x}]", "tokenizer=", "examples.legal_tokens=true"])
    with pytest.raises(ConfigError, match="rules_loss_weight must be >= 0"):
        load_train_config(None, ["train.rules_loss_weight=-1"])


@pytest.fixture(scope="module")
def legal_dataset(tmp_path_factory: pytest.TempPathFactory, mixed_games_dir: Path, tiny_model_dir: Path) -> Path:
    from training.dataset import build_dataset

    out = tmp_path_factory.mktemp("legal") / "ds"
    cfg = load_dataset_config(
        None,
        [
            f"sources=[{{path: {mixed_games_dir}}}]",
            f"out={out}",
            f"tokenizer={tiny_model_dir}",
            "workers=1",
            "examples.kinds={continuation: 1.0}",
            "examples.window_plies=8",
            "examples.positions_per_game=3",
            "examples.legal_tokens=true",
            "split.validation_fraction=0.15",
            "split.eval_positions_per_game=2",
            "max_length=256",
        ],
    )
    build_dataset(cfg, progress_bar=False)
    return out


def test_batches_line_the_legal_tokens_up_with_the_moves(legal_dataset: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from training.data import load_examples, move_start_tokens, pack_rows
    from training.modeling import build_collator

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.pad_token = tok.pad_token or tok.eos_token  # as the trainer sets it
    split = load_examples(legal_dataset, "train", tok, max_length=256)
    assert split.legal_values is not None and len(split) > 20
    starts = move_start_tokens(tok)
    moves = 0
    for i in range(len(split)):
        x, sets = split.ids(i), split.legal(i)
        # The build's sets are one a move of the completion, and hold the move played.
        where = [t for t in range(int(split.prompt_lens[i]), len(x)) if starts[x[t]]]
        assert len(where) == len(sets) > 0
        assert all(x[t] in s for t, s in zip(where, sets, strict=True))
        moves += len(sets)
    rows = pack_rows(split.lengths, 256, packing=True)
    collate = build_collator(split, rows, tok, rules=True)
    batch = collate(np.arange(len(rows)))
    pos, ids = batch["rules_pos"], batch["rules_ids"]
    assert pos.shape[0] == moves == ids.shape[0] and collate.rules_skipped == 0
    for (b, t), legal in zip(pos.tolist(), ids.tolist(), strict=True):
        target = int(batch["input_ids"][b, t + 1])  # the logits at t predict the token at t + 1
        assert starts[target] and target in legal and int(batch["labels"][b, t + 1]) == target
    # Without rules=True (validation, evaluation) the batches are as before.
    assert set(build_collator(split, rows, tok)(np.arange(2))) == {"input_ids", "labels", "position_ids"}


def rules_overrides(model: Path, data: Path, out: Path, weight: float) -> list[str]:
    return [
        f"model.path={model}",
        f"data.path={data}",
        f"train.output_dir={out}",
        "data.max_length=256",
        "lora.enabled=false",
        "eval.eval_steps=0",
        "eval.generation_positions=0",
        "train.max_steps=2",
        "train.per_device_train_batch_size=2",
        "train.gradient_accumulation_steps=2",
        "train.learning_rate=0.001",
        "train.gradient_checkpointing=false",
        "train.threads=1",
        "train.save_steps=0",
        f"train.rules_loss_weight={weight}",
    ]


def test_the_rules_loss_is_the_mass_off_the_legal_moves(tmp_path: Path, tiny_model_dir: Path, legal_dataset: Path) -> None:
    from training.trainer import Trainer

    trainer = Trainer(load_train_config(None, rules_overrides(tiny_model_dir, legal_dataset, tmp_path / "r", 0.5)))
    trainer.setup()
    batch = trainer.collate(trainer.plan.rows(0))
    n_items = torch.tensor(float((batch["labels"][:, 1:] != -100).sum()))
    ce, rules = trainer.forward_rules(dict(batch), n_items)
    plain = {k: v for k, v in batch.items() if not k.startswith("rules_")}
    with torch.no_grad():
        want = trainer.model(**plain, use_cache=False, num_items_in_batch=n_items).loss
    torch.testing.assert_close(ce.detach(), want, atol=1e-5, rtol=1e-5)  # the same cross-entropy
    # The rules loss by hand: -log of the softmax mass on the legal first tokens, per move.
    with torch.no_grad():
        logits = trainer.model(**plain, use_cache=False).logits.float()
    by_hand = 0.0
    for (b, t), legal in zip(batch["rules_pos"].tolist(), batch["rules_ids"].tolist(), strict=True):
        p = torch.softmax(logits[b, t], -1)
        by_hand += -float(torch.log(p[[i for i in legal if i >= 0]].sum()))
    assert trainer._rules_moves == batch["rules_pos"].shape[0] > 0
    assert float(rules.detach()) == pytest.approx(by_hand / float(n_items), rel=1e-4)
    # A whole step: the loss logged is the cross-entropy, the rules loss beside it per move.
    stats = trainer.train_step()
    assert stats["rules_moves"] > 0 and stats["rules_loss"] > 0 and stats["loss"] > 0
    assert stats["loss"] == pytest.approx(trainer._ce_sum)
    # The evaluation reports the held-out rules loss beside the validation loss.
    metrics = trainer.evaluate()
    assert 0 < metrics["eval_rules_loss"] < 20 and metrics["eval_loss"] > 0


def test_the_rules_loss_needs_legal_tokens(tmp_path: Path, tiny_model_dir: Path, train_dataset: Path) -> None:
    from training.errors import DataError
    from training.trainer import Trainer

    trainer = Trainer(load_train_config(None, rules_overrides(tiny_model_dir, train_dataset, tmp_path / "r", 1.0)))
    with pytest.raises(DataError, match="needs legal tokens in .* examples.legal_tokens=true"):
        trainer.setup()


def test_a_run_without_the_rules_loss_still_reports_it_on_a_build_with_legal_tokens(
    tmp_path: Path, tiny_model_dir: Path, legal_dataset: Path
) -> None:
    from training.trainer import Trainer

    trainer = Trainer(load_train_config(None, rules_overrides(tiny_model_dir, legal_dataset, tmp_path / "r", 0.0)))
    trainer.setup()
    assert set(trainer.collate(trainer.plan.rows(0))) == {"input_ids", "labels", "position_ids"}  # not trained on
    assert "rules_loss" not in trainer.train_step()
    assert trainer.evaluate()["eval_rules_loss"] > 0  # the arm without it is measured the same way


def test_completion_moves_skip_move_numbers_and_results() -> None:
    assert completion_moves(" Bc4 Nc6 4. Qh5 Nf6 5. Qxf7# 1-0") == 5
    assert completion_moves(" 12... O-O") == 1
