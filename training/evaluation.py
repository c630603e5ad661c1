"""Evaluation during training: validation loss, and move quality of free generation.

``validation_loss``
    mean cross-entropy per completion token on validation rows (same packing as training).
``generation_metrics``
    on held-out next-move positions: greedy generation of a few tokens after the prompt,
    read with the engine's own parser (:func:`engine.player.parse_model_move`, which
    also repairs the slips it repairs at play time). ``legal_rate`` is the share of
    outputs that give a legal move, ``exact_move_accuracy`` the share that give the move
    played in the game.

Under several processes each rank takes a slice and the counts are summed; every rank
runs the same number of forward passes (FSDP gathers weights in each one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import chess

from engine.player import parse_model_move
from training.data import EvalPosition


def validation_loss(
    model: Any,
    batches: list[dict[str, Any]],
    device: Any,
    *,
    autocast: Callable[[], Any] = contextlib.nullcontext,
    all_reduce: Callable[[list[float]], list[float]] = lambda x: x,
) -> dict[str, float]:
    import torch

    total, tokens = 0.0, 0.0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in batches:
            n = int((batch["labels"][:, 1:] != -100).sum())
            if n == 0:
                continue
            inputs = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                out = model(**inputs, use_cache=False, num_items_in_batch=torch.tensor(n, device=device))
            total += float(out.loss) * n
            tokens += n
    model.train(was_training)
    total, tokens = all_reduce([total, tokens])
    return {"eval_loss": total / tokens if tokens else float("nan"), "eval_tokens": tokens}


def generation_metrics(
    model: Any,
    tokenizer: Any,
    positions: list[EvalPosition],
    *,
    device: Any,
    max_new_tokens: int,
    batch_size: int,
    add_special_tokens: bool = True,
    rank: int = 0,
    world: int = 1,
    synced_gpus: bool = False,
    autocast: Callable[[], Any] = contextlib.nullcontext,
    all_reduce: Callable[[list[float]], list[float]] = lambda x: x,
) -> dict[str, float]:
    import torch

    # Equal-length slices per rank (padded with repeats that are not counted).
    per_rank = -(-len(positions) // world) if positions else 0
    mine = positions[rank * per_rank : (rank + 1) * per_rank]
    counted = len(mine)
    if positions and len(mine) < per_rank:
        mine = mine + [positions[0]] * (per_rank - len(mine))
    legal = exact = resign = 0
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with torch.no_grad():
            for start in range(0, len(mine), batch_size):
                chunk = mine[start : start + batch_size]
                enc = tokenizer(
                    [p.prompt for p in chunk], return_tensors="pt", padding=True, add_special_tokens=add_special_tokens
                ).to(device)
                with autocast():
                    out = model.generate(
                        **enc,
                        max_new_tokens=max_new_tokens,
                        min_new_tokens=max_new_tokens if synced_gpus else 0,
                        do_sample=False,
                        pad_token_id=tokenizer.pad_token_id,
                        use_cache=True,
                        synced_gpus=synced_gpus,
                    )
                texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
                for i, (pos, text) in enumerate(zip(chunk, texts, strict=True)):
                    if start + i >= counted:
                        continue
                    board = chess.Board(pos.fen)
                    move, kind = parse_model_move(board, " " + text)
                    played, _ = parse_model_move(board, pos.completion)
                    if move is not None:
                        legal += 1
                        exact += int(move == played)
                    elif kind == "resign":
                        resign += 1
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    n, legal_f, exact_f, resign_f = all_reduce([float(counted), float(legal), float(exact), float(resign)])
    if n == 0:
        return {}
    return {
        "legal_rate": legal_f / n,
        "exact_move_accuracy": exact_f / n,
        "resign_rate": resign_f / n,
        "eval_positions": n,
    }
