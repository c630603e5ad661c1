"""Games packed small: one byte a move, for carrying many games to the GPU machine.

A GPU call carries at most 64 MiB with the repository (about 43 MB), which leaves room for
about 120,000 self-play games as LAION parquet (about 186 bytes a game). Packed, a game takes
about 80 bytes: each move is written as its index among the position's legal moves sorted by
(from square, to square, promotion piece) (an order that does not depend on the python-chess
version's move generation), and the whole stream is xz-compressed.

File layout (inside the xz stream): the magic ``MCGAMES1\\n``; a 4-byte little-endian length
and a JSON header (``games``, the ``results`` and ``terminations`` tables, ``source``); then
per game one byte result index, one byte termination index (255: none), a 2-byte ply count
and one byte per ply.

``mistral-chess dataset pack-games SRC... --out FILE`` and ``dataset unpack-games FILE --out
DIR`` (LAION parquet chunks, ``Moves``/``Termination``/``Result``, the games exactly as they
were). Games that cannot be packed (a move that is not legal) are left out and counted.
"""

from __future__ import annotations

import json
import lzma
import multiprocessing
import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import chess

from training.errors import DataError

MAGIC = b"MCGAMES1\n"
NO_TERMINATION = 255


def _key(m: chess.Move) -> tuple[int, int, int]:
    return (m.from_square, m.to_square, m.promotion or 0)


def _sorted_legal(board: chess.Board) -> list[chess.Move]:
    return sorted(board.legal_moves, key=_key)


def encode_moves(moves: Sequence[str]) -> bytes:
    """The plies of one game from the start position as indices; DataError for an illegal move."""
    board = chess.Board()
    out = bytearray()
    for ply, uci in enumerate(moves):
        legal = _sorted_legal(board)
        try:
            move = chess.Move.from_uci(uci)
            i = legal.index(move)
        except ValueError:
            raise DataError(f"ply {ply + 1}: {uci!r} is not a legal move in {board.fen()}") from None
        out.append(i)
        board.push(move)
    return bytes(out)


def decode_moves(data: bytes) -> list[str]:
    board = chess.Board()
    moves = []
    for ply, i in enumerate(data):
        legal = _sorted_legal(board)
        if i >= len(legal):
            raise DataError(f"ply {ply + 1}: index {i} but the position has {len(legal)} legal moves")
        moves.append(legal[i].uci())
        board.push(legal[i])
    return moves


def _encode_chunk(games: list[tuple[list[str], str | None, str]]) -> tuple[list[tuple[bytes, str | None, str]], list[str]]:
    packed, problems = [], []
    for moves, termination, result in games:
        try:
            packed.append((encode_moves(moves), termination, result))
        except DataError as exc:
            problems.append(str(exc))
    return packed, problems


def _decode_chunk(records: list[tuple[bytes, str | None, str]]) -> list[tuple[list[str], str | None, str]]:
    return [(decode_moves(data), term, result) for data, term, result in records]


def read_laion(paths: Iterable[Path]) -> Iterator[tuple[list[str], str | None, str]]:
    import pyarrow.parquet as pq

    from training.sources import PARQUET_COLUMNS

    for path in paths:
        table = pq.read_table(path, columns=list(PARQUET_COLUMNS))
        yield from zip(*(table.column(c).to_pylist() for c in PARQUET_COLUMNS), strict=True)


def parquet_files(sources: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            files += sorted(p.rglob("*.parquet"))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{src}: no such file or folder")
    if not files:
        raise DataError(f"no parquet file in {', '.join(map(str, sources))}")
    return files


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def pack_games(sources: Sequence[str | Path], out: str | Path, *, workers: int = 1) -> dict[str, Any]:
    """Pack the LAION parquet games of ``sources`` (files or folders) into ``out``."""
    files = parquet_files(sources)
    games = list(read_laion(files))
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_encode_chunk, _chunks(games, 1000))
    else:
        parts = [_encode_chunk(games)]
    packed = [g for part, _ in parts for g in part]
    problems = [p for _, part in parts for p in part]
    results = sorted({r for _, _, r in packed})
    terminations = sorted({t for _, t, _ in packed if t is not None})
    if len(terminations) >= NO_TERMINATION or len(results) > 255:
        raise DataError(f"too many distinct terminations ({len(terminations)}) or results ({len(results)}) to pack")
    header = {"games": len(packed), "results": results, "terminations": terminations,
              "source": [str(f) for f in files][:5] + (["..."] if len(files) > 5 else []),
              "skipped": len(problems), "skipped_first": problems[:3]}  # fmt: skip
    r_index = {r: i for i, r in enumerate(results)}
    t_index = {t: i for i, t in enumerate(terminations)}
    body = bytearray()
    for data, term, result in packed:
        if len(data) > 0xFFFF:
            raise DataError(f"a game of {len(data)} plies is longer than the format allows (65,535)")
        body += struct.pack("<BBH", r_index[result], NO_TERMINATION if term is None else t_index[term], len(data))
        body += data
    head = json.dumps(header).encode()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(lzma.compress(MAGIC + struct.pack("<I", len(head)) + head + bytes(body), preset=9))
    tmp.replace(out)
    return {"games": len(packed), "skipped": len(problems), "skipped_first": problems[:3],
            "bytes": out.stat().st_size, "bytes_per_game": round(out.stat().st_size / max(1, len(packed)), 1),
            "parquet_bytes": sum(f.stat().st_size for f in files)}  # fmt: skip


def packed_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a packed file (``games``, ...), decompressing only its start."""
    path = Path(path)
    dec = lzma.LZMADecompressor()
    raw = b""
    start = len(MAGIC) + 4  # the header follows the magic and its 4-byte length
    try:
        with path.open("rb") as f:
            while len(raw) < start or len(raw) < start + struct.unpack_from("<I", raw, len(MAGIC))[0]:
                if len(raw) >= len(MAGIC) and not raw.startswith(MAGIC):
                    break
                block = f.read(1 << 16)
                if not block:
                    raise EOFError("the file ends inside its header")
                raw += dec.decompress(block)
        if not raw.startswith(MAGIC):
            raise DataError(f"{path}: not a packed games file (no {MAGIC!r} at the start)")
        (n,) = struct.unpack_from("<I", raw, len(MAGIC))
        header: dict[str, Any] = json.loads(raw[start : start + n])
        return header
    except (lzma.LZMAError, EOFError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a packed games file ({type(exc).__name__}: {exc})") from None


def read_packed(path: str | Path) -> tuple[dict[str, Any], list[tuple[bytes, str | None, str]]]:
    """The header and the packed records of a file written by :func:`pack_games`."""
    path = Path(path)
    try:
        raw = lzma.decompress(path.read_bytes())
    except (lzma.LZMAError, EOFError) as exc:
        raise DataError(f"{path}: not a packed games file (xz: {exc})") from None
    if not raw.startswith(MAGIC):
        raise DataError(f"{path}: not a packed games file (no {MAGIC!r} at the start)")
    pos = len(MAGIC)
    try:
        (n,) = struct.unpack_from("<I", raw, pos)
        header = json.loads(raw[pos + 4 : pos + 4 + n])
        pos += 4 + n
        results, terminations = header["results"], header["terminations"]
        records = []
        for g in range(int(header["games"])):
            r, t, plies = struct.unpack_from("<BBH", raw, pos)
            pos += 4
            if pos + plies > len(raw):
                raise DataError(f"{path}: game {g + 1} is cut off (the file is truncated)")
            records.append((raw[pos : pos + plies], None if t == NO_TERMINATION else terminations[t], results[r]))
            pos += plies
    except (struct.error, json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        raise DataError(f"{path}: corrupt packed games file ({type(exc).__name__}: {exc})") from None
    if pos != len(raw):
        raise DataError(f"{path}: {len(raw) - pos} bytes after the last of {header['games']} games")
    return header, records


def unpack_games(path: str | Path, out: str | Path, *, chunk_games: int = 500, workers: int = 1) -> dict[str, Any]:
    """Write the games of a packed file as LAION parquet chunks ``games-FIRST-END.parquet`` in ``out``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    header, records = read_packed(path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chunks = _chunks(records, chunk_games)
    if workers > 1 and len(chunks) > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            decoded = pool.map(_decode_chunk, chunks)
    else:
        decoded = [_decode_chunk(c) for c in chunks]
    start = 0
    for games in decoded:
        table = pa.table({
            "Moves": pa.array([g[0] for g in games], type=pa.list_(pa.string())),
            "Termination": pa.array([g[1] for g in games], type=pa.string()),
            "Result": pa.array([g[2] for g in games], type=pa.string()),
        })  # fmt: skip
        pq.write_table(table, out / f"games-{start:08d}-{start + len(games):08d}.parquet")
        start += len(games)
    return {"games": start, "chunks": len(decoded), "out": str(out), "packed_from": header.get("source")}
