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

from engine.player import first_move_token, parse_model_move
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
    outputs: list[str] | None = None,
) -> dict[str, float]:
    """Legal, exact and resignation rates of greedy generation on ``positions``.
    ``outputs``, when given, receives the decoded text generated for each of this rank's
    positions, in order (the parser reads ``" " + text``)."""
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
                    if outputs is not None:
                        outputs.append(text)
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


# What classify_output answers, in the order a report lists them.
OUTPUT_CLASSES = (
    "legal",
    "resign",
    "result",
    "no-move",  # nothing, or a word that is not SAN or UCI at all
    "castling-not-allowed",
    "no-such-piece",  # the side to move has no piece of that kind
    "own-piece-on-square",  # the target square holds one of the mover's own pieces
    "unreachable",  # no piece of that kind reaches the square (board misread)
    "wrong-disambiguation",  # a piece of that kind reaches it, not the one named
    "ambiguous",  # two pieces reach it and the SAN does not say which
    "ignores-check",  # the move exists but leaves the king in the check it is in
    "king-into-check",
    "pinned-piece",  # the move exists but uncovers the king
)

_SAN_PIECES = {"N": chess.KNIGHT, "B": chess.BISHOP, "R": chess.ROOK, "Q": chess.QUEEN, "K": chess.KING}


def classify_output(board: chess.Board, text: str) -> str:
    """Why ``text`` (generated after a prompt ending at ``board``) is or is not a legal
    move: one of :data:`OUTPUT_CLASSES`. Outputs the engine's parser reads as a legal move
    (repairs included) are ``legal``; the others are sorted by the first rule of chess
    they break, from "not a move at all" to "a move that exists but is illegal"."""
    move, kind = parse_model_move(board, text)
    if move is not None:
        return "legal"
    if kind in ("resign", "result"):
        return kind
    token = first_move_token(text)
    if token is None:
        return "no-move"
    token = token.rstrip("!?+#,;.").replace("0", "O")
    if token in ("O-O", "O-O-O"):
        return "castling-not-allowed"
    m = chess.SAN_REGEX.match(token)
    if not m:
        return "no-move"
    piece = _SAN_PIECES.get(m.group(1) or "", chess.PAWN)
    from_file = chess.FILE_NAMES.index(m.group(2)) if m.group(2) else None
    from_rank = int(m.group(3)) - 1 if m.group(3) else None
    to_square = chess.parse_square(m.group(4))
    if not board.pieces(piece, board.turn):
        return "no-such-piece"
    own = board.color_at(to_square) == board.turn
    reaching = [
        mv
        for mv in board.generate_pseudo_legal_moves()
        if mv.to_square == to_square and board.piece_type_at(mv.from_square) == piece and not board.is_castling(mv)
    ]
    if not reaching:
        return "own-piece-on-square" if own else "unreachable"
    named = [
        mv
        for mv in reaching
        if (from_file is None or chess.square_file(mv.from_square) == from_file)
        and (from_rank is None or chess.square_rank(mv.from_square) == from_rank)
    ]
    if not named:
        # A pawn's file is where it stands, not a choice among pieces: none of them gets there.
        return "wrong-disambiguation" if piece != chess.PAWN else "unreachable"
    legal = [mv for mv in named if board.is_legal(mv)]
    if legal:
        # Legal moves that the parser still refused: several pieces fit the SAN.
        return "ambiguous"
    if board.is_check():
        return "ignores-check"
    return "king-into-check" if piece == chess.KING else "pinned-piece"
