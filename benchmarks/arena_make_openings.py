"""Write the arena's bundled opening suite, arena/data/openings.pgn.

The candidates are well-known named opening lines, cut to 4-8 plies. Each final
position is evaluated by full-strength Stockfish at a fixed depth; lines whose
evaluation is within ``--max-cp`` of equality are kept, in the order below, each
with its evaluation in an ``Eval`` tag (White's view, centipawns).

    .venv/bin/python benchmarks/arena_make_openings.py [--depth 18] [--max-cp 50]

``--random N`` writes another kind of suite: N balanced lines of ``--plies`` (8) uniformly
random legal moves (seeded by ``--seed``), the way self-play opens its non-book games. The
bundled suite's lines are the self-play book, so the bundled model has seen every one of them,
and the games Stockfish played from them, many times; random lines of 8 plies it has not (about
10^11 of them, against under a million random openings in all its training sets):

    .venv/bin/python benchmarks/arena_make_openings.py --random 50 --seed 1 --depth 14 \
        --out arena/data/openings-random8.pgn
"""

from __future__ import annotations

import argparse
import random
import sys

import chess

from arena.engines import find_stockfish
from arena.openings import Opening, bundled_path, check_suite, evaluate, write_pgn

# (ECO, name, SAN moves). 4-8 plies each.
CANDIDATES: list[tuple[str, str, str]] = [
    ("C60", "Ruy Lopez", "e4 e5 Nf3 Nc6 Bb5 a6"),
    ("C65", "Ruy Lopez: Berlin Defence", "e4 e5 Nf3 Nc6 Bb5 Nf6"),
    ("C78", "Ruy Lopez: Morphy Defence", "e4 e5 Nf3 Nc6 Bb5 a6 Ba4 Nf6"),
    ("C68", "Ruy Lopez: Exchange Variation", "e4 e5 Nf3 Nc6 Bb5 a6 Bxc6 dxc6"),
    ("C50", "Italian Game: Giuoco Piano", "e4 e5 Nf3 Nc6 Bc4 Bc5"),
    ("C55", "Italian Game: Two Knights Defence", "e4 e5 Nf3 Nc6 Bc4 Nf6"),
    ("C54", "Italian Game: Giuoco Pianissimo", "e4 e5 Nf3 Nc6 Bc4 Bc5 c3 Nf6"),
    ("C45", "Scotch Game", "e4 e5 Nf3 Nc6 d4 exd4 Nxd4 Nf6"),
    ("C47", "Four Knights Game", "e4 e5 Nf3 Nc6 Nc3 Nf6"),
    ("C42", "Petrov Defence", "e4 e5 Nf3 Nf6 Nxe5 d6 Nf3 Nxe4"),
    ("C41", "Philidor Defence", "e4 e5 Nf3 d6 d4 Nf6"),
    ("C44", "Ponziani Opening", "e4 e5 Nf3 Nc6 c3 Nf6"),
    ("C25", "Vienna Game", "e4 e5 Nc3 Nf6"),
    ("C23", "Bishop's Opening", "e4 e5 Bc4 Nf6"),
    ("C30", "King's Gambit Declined", "e4 e5 f4 Bc5"),
    ("C33", "King's Gambit Accepted", "e4 e5 f4 exf4 Nf3 d5"),
    ("B90", "Sicilian Defence: Najdorf", "e4 c5 Nf3 d6 d4 cxd4 Nxd4 Nf6"),
    ("B33", "Sicilian Defence: Open, Four Knights", "e4 c5 Nf3 Nc6 d4 cxd4 Nxd4 Nf6"),
    ("B40", "Sicilian Defence: French Variation", "e4 c5 Nf3 e6 d4 cxd4 Nxd4 a6"),
    ("B22", "Sicilian Defence: Alapin", "e4 c5 c3 Nf6 e5 Nd5"),
    ("B23", "Sicilian Defence: Closed", "e4 c5 Nc3 Nc6 g3 g6"),
    ("B51", "Sicilian Defence: Moscow Variation", "e4 c5 Nf3 d6 Bb5+ Bd7"),
    ("B30", "Sicilian Defence: Rossolimo", "e4 c5 Nf3 Nc6 Bb5 g6"),
    ("B27", "Sicilian Defence: Hyperaccelerated Dragon", "e4 c5 Nf3 g6 d4 cxd4"),
    ("C11", "French Defence: Classical", "e4 e6 d4 d5 Nc3 Nf6"),
    ("C15", "French Defence: Winawer", "e4 e6 d4 d5 Nc3 Bb4"),
    ("C02", "French Defence: Advance", "e4 e6 d4 d5 e5 c5"),
    ("C03", "French Defence: Tarrasch", "e4 e6 d4 d5 Nd2 Nf6"),
    ("C01", "French Defence: Exchange", "e4 e6 d4 d5 exd5 exd5"),
    ("B12", "Caro-Kann Defence: Advance", "e4 c6 d4 d5 e5 Bf5"),
    ("B18", "Caro-Kann Defence: Classical", "e4 c6 d4 d5 Nc3 dxe4 Nxe4 Bf5"),
    ("B13", "Caro-Kann Defence: Exchange", "e4 c6 d4 d5 exd5 cxd5"),
    ("B10", "Caro-Kann Defence: Two Knights", "e4 c6 Nc3 d5 Nf3 Bg4"),
    ("B07", "Pirc Defence", "e4 d6 d4 Nf6 Nc3 g6"),
    ("B06", "Modern Defence", "e4 g6 d4 Bg7 Nc3 d6"),
    ("B01", "Scandinavian Defence", "e4 d5 exd5 Qxd5 Nc3 Qa5"),
    ("B01", "Scandinavian Defence: Modern", "e4 d5 exd5 Nf6 d4 Nxd5"),
    ("B02", "Alekhine Defence", "e4 Nf6 e5 Nd5 d4 d6"),
    ("D37", "Queen's Gambit Declined", "d4 d5 c4 e6 Nc3 Nf6"),
    ("D35", "Queen's Gambit Declined: Exchange", "d4 d5 c4 e6 Nc3 Nf6 cxd5 exd5"),
    ("D20", "Queen's Gambit Accepted", "d4 d5 c4 dxc4 Nf3 Nf6"),
    ("D10", "Slav Defence", "d4 d5 c4 c6 Nf3 Nf6"),
    ("D43", "Semi-Slav Defence", "d4 d5 c4 c6 Nf3 Nf6 Nc3 e6"),
    ("D11", "Slav Defence: Exchange", "d4 d5 c4 c6 cxd5 cxd5"),
    ("E20", "Nimzo-Indian Defence", "d4 Nf6 c4 e6 Nc3 Bb4"),
    ("E32", "Nimzo-Indian Defence: Classical", "d4 Nf6 c4 e6 Nc3 Bb4 Qc2 O-O"),
    ("E12", "Queen's Indian Defence", "d4 Nf6 c4 e6 Nf3 b6"),
    ("E11", "Bogo-Indian Defence", "d4 Nf6 c4 e6 Nf3 Bb4+"),
    ("E60", "King's Indian Defence", "d4 Nf6 c4 g6 Nc3 Bg7"),
    ("E90", "King's Indian Defence: Classical", "d4 Nf6 c4 g6 Nc3 Bg7 e4 d6"),
    ("D85", "Grünfeld Defence", "d4 Nf6 c4 g6 Nc3 d5"),
    ("E01", "Catalan Opening", "d4 Nf6 c4 e6 g3 d5"),
    ("A57", "Benko Gambit", "d4 Nf6 c4 c5 d5 b5"),
    ("A60", "Modern Benoni", "d4 Nf6 c4 c5 d5 e6"),
    ("A80", "Dutch Defence", "d4 f5 g3 Nf6 Bg2 e6"),
    ("A87", "Dutch Defence: Leningrad", "d4 f5 c4 Nf6 g3 g6"),
    ("D02", "London System", "d4 d5 Nf3 Nf6 Bf4 e6"),
    ("A46", "London System vs King's Indian", "d4 Nf6 Bf4 g6 e3 Bg7"),
    ("D00", "Queen's Pawn: Jobava London", "d4 d5 Nc3 Nf6 Bf4 c5"),
    ("A45", "Trompowsky Attack", "d4 Nf6 Bg5 e6 e4 h6"),
    ("D05", "Colle System", "d4 d5 Nf3 Nf6 e3 e6"),
    ("A40", "English Defence", "d4 e6 c4 b6"),
    ("A30", "English Opening: Symmetrical", "c4 c5 Nc3 Nc6 g3 g6"),
    ("A20", "English Opening: Reversed Sicilian", "c4 e5 Nc3 Nf6 g3 d5"),
    ("A16", "English Opening: Anglo-Indian", "c4 Nf6 Nc3 e6 e4 d5"),
    ("A15", "English Opening: Anglo-Indian, King's Indian", "c4 Nf6 Nc3 g6 g3 Bg7"),
    ("A10", "English Opening: Anglo-Dutch", "c4 f5 Nc3 Nf6"),
    ("A04", "Réti Opening", "Nf3 d5 c4 e6 g3 Nf6"),
    ("A05", "King's Indian Attack", "Nf3 Nf6 g3 g6 Bg2 Bg7"),
    ("A06", "Réti Opening: Zukertort", "Nf3 d5 g3 c6 Bg2 Bg4"),
    ("A01", "Nimzo-Larsen Attack", "b3 e5 Bb2 Nc6"),
    ("A00", "Sokolsky Opening", "b4 e5 Bb2 Bxb4"),
    ("A02", "Bird Opening", "f4 d5 Nf3 Nf6 e3 g6"),
    ("B04", "Alekhine Defence: Modern", "e4 Nf6 e5 Nd5 d4 d6 Nf3 Bg4"),
    ("A00", "Hungarian Opening", "g3 d5 Bg2 e5"),
    ("C00", "French Defence: King's Indian Attack", "e4 e6 d3 d5 Nd2 Nf6"),
    ("B00", "Nimzowitsch Defence", "e4 Nc6 Nf3 d6 d4 Nf6"),
    ("B08", "Pirc Defence: Classical", "e4 d6 d4 Nf6 Nc3 g6 Nf3 Bg7"),
    ("A43", "Old Benoni", "d4 c5 d5 e5 e4 d6"),
    ("D06", "Queen's Gambit: Marshall Defence", "d4 d5 c4 Nf6 cxd5 Nxd5"),
    ("D30", "Queen's Gambit Declined: Vienna", "d4 d5 c4 e6 Nf3 Nf6 g3 Bb4+"),
    ("E00", "Indian Game: East Indian", "d4 Nf6 c4 e6 g3 Bb4+ Bd2 Be7"),
    ("A48", "Torre Attack", "d4 Nf6 Nf3 e6 Bg5 c5"),
    ("A53", "Old Indian Defence", "d4 Nf6 c4 d6 Nc3 e5"),
]


def build(depth: int) -> tuple[list[Opening], list[int]]:
    openings = []
    for eco, name, text in CANDIDATES:
        board = chess.Board()
        for san in text.split():
            board.push_san(san)  # a typo in the list is an error here
        openings.append(Opening(name=name, fen=chess.STARTING_FEN, moves=tuple(board.move_stack), eco=eco))
    problems = check_suite(openings)
    if problems:
        raise SystemExit("candidate list: " + "; ".join(problems))
    scores = evaluate(openings, find_stockfish(), depth=depth)
    return openings, scores


def random_lines(n: int, seed: int, plies: int, depth: int, max_cp: int) -> list[Opening]:
    """``n`` distinct lines of ``plies`` uniformly random legal moves whose final position
    Stockfish (``depth``) scores within ``max_cp`` of equality, in the order found.

    Candidates are drawn in batches and each batch is scored by one Stockfish process (every
    position as a new game, so a score does not depend on the batch); they are then taken in
    the order drawn, so the suite is the same whatever the batch size."""
    rng = random.Random(seed)
    stockfish = find_stockfish()
    kept: list[Opening] = []
    seen: set[str] = set()
    tried = 0
    while len(kept) < n:
        if tried >= 200 * n:
            raise SystemExit(f"only {len(kept)} balanced lines in {tried} tries: raise --max-cp")
        batch: list[chess.Board] = []
        for _ in range(min(2 * (n - len(kept)) + 4, 200 * n - tried)):
            board = chess.Board()
            for _ in range(plies):
                board.push(rng.choice(list(board.legal_moves)))
            batch.append(board)
        playable = [b for b in batch if not b.is_game_over()]
        scores = evaluate([Opening("", chess.STARTING_FEN, tuple(b.move_stack)) for b in playable], stockfish, depth=depth)
        cps = {id(b): cp for b, cp in zip(playable, scores, strict=True)}
        for board in batch:
            tried += 1
            if id(board) not in cps or board.epd() in seen or abs(cps[id(board)]) > max_cp:
                continue
            seen.add(board.epd())
            kept.append(Opening(f"Random {len(kept) + 1}", chess.STARTING_FEN, tuple(board.move_stack), "", cps[id(board)]))
            if len(kept) == n:
                break
    print(f"{n} balanced lines of {tried} random ones", file=sys.stderr)
    return kept


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument(
        "--max-cp", type=int, default=50, help="keep lines within this many centipawns of equality"
    )
    parser.add_argument("--out", default=str(bundled_path()))
    parser.add_argument("--random", type=int, default=0, help="N lines of random moves instead of the named lines")
    parser.add_argument("--plies", type=int, default=8, help="plies of each random line (4-8)")
    parser.add_argument("--seed", type=int, default=1, help="the random lines' seed")
    args = parser.parse_args()
    if args.random:
        if not 4 <= args.plies <= 8:
            parser.error(f"--plies must be 4-8, not {args.plies}")
        lines = random_lines(args.random, args.seed, args.plies, args.depth, args.max_cp)
        header = (
            f"mistral-chess arena: {len(lines)} balanced lines of {args.plies} random legal moves (seed {args.seed}).\n"
            f"Written by benchmarks/arena_make_openings.py --random: Stockfish depth {args.depth}, kept |Eval| <= "
            f"{args.max_cp} cp.\nEval: Stockfish's evaluation of the final position, White's view, in centipawns."
        )
        write_pgn(lines, args.out, depth=args.depth, header=header)
        print(f"{len(lines)} lines -> {args.out}", file=sys.stderr)
        return 0
    openings, scores = build(args.depth)
    kept = []
    for o, cp in zip(openings, scores, strict=True):
        status = "keep" if abs(cp) <= args.max_cp else "drop"
        print(f"{status} {cp:+5d}  {o.eco} {o.name}: {' '.join(o.sans())}")
        if status == "keep":
            kept.append(Opening(o.name, o.fen, o.moves, o.eco, cp))
    header = (
        "mistral-chess arena: bundled opening suite (balanced lines of 4-8 plies).\n"
        f"Written by benchmarks/arena_make_openings.py: Stockfish depth {args.depth}, kept |Eval| <= {args.max_cp} cp.\n"
        "Eval: Stockfish's evaluation of the final position, White's view, in centipawns."
    )
    write_pgn(kept, args.out, depth=args.depth, header=header)
    print(f"{len(kept)} of {len(openings)} lines kept -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
