"""Games packed small, for carrying many games to the GPU machine.

A GPU call carries at most 64 MiB with the repository (about 43 MB), which leaves room for
about 120,000 self-play games as LAION parquet (about 186 bytes a game). Packed, the whole
stream xz-compressed, a game takes (set O's self-play games):

* **version 1**, about 80 bytes: each move as one byte, its index among the position's legal
  moves sorted by (from square, to square, promotion piece) (an order that does not depend on
  the python-chess version's move generation). Decoding generates every position's legal
  moves: about 3.8 ms a game on the development machine, more than building its examples.
* **version 2** (the default), about 111 bytes: each move as two bytes, the index of the
  moving piece's square among the mover's occupied squares (ascending), then the index of
  the destination among that piece's pseudo-legal destination squares (ascending, low 5 bits)
  with the promotion piece (high 3 bits: none, queen, knight, rook, bishop). Decoding looks
  at one piece a ply: about 1.2 ms a game, 3.1 times faster, for 36% more bytes (ad-hoc timing, 4,000 games
  of set O: 81.4 and 111.1 bytes a game). The GPU machine's cores are slow (its self-play and
  its build run at about a third of this machine's speed a worker), so the build's time there
  costs more than one more call to carry the games.

File layout (inside the xz stream): the magic ``MCGAMES1\\n`` or ``MCGAMES2\\n``; a 4-byte
little-endian length and a JSON header (``games``, the ``results`` and ``terminations``
tables, ``source``); then per game one byte result index, one byte termination index (255:
none), a 2-byte ply count and one (version 1) or two (version 2) bytes per ply.

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

MAGIC = b"MCGAMES1\n"  # version 1
MAGIC2 = b"MCGAMES2\n"
MAGICS = {MAGIC: 1, MAGIC2: 2}
NO_TERMINATION = 255
BYTES_PER_PLY = {1: 1, 2: 2}
_PROMOTIONS = (None, chess.QUEEN, chess.KNIGHT, chess.ROOK, chess.BISHOP)
_PROMOTION_CODE = {p: i for i, p in enumerate(_PROMOTIONS)}


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


def decode_moves(data: bytes, version: int = 1) -> list[str]:
    """The UCI moves of one packed game (DataError for bytes that do not decode)."""
    if version == 2:
        return _decode_pieces(data)
    board = chess.Board()
    moves = []
    for ply, i in enumerate(data):
        legal = _sorted_legal(board)
        if i >= len(legal):
            raise DataError(f"ply {ply + 1}: index {i} but the position has {len(legal)} legal moves")
        moves.append(legal[i].uci())
        board.push(legal[i])
    return moves


def _destinations(board: chess.Board, square: int) -> list[int]:
    """The pseudo-legal destination squares of the piece on ``square``, ascending."""
    return sorted({m.to_square for m in board.generate_pseudo_legal_moves(from_mask=chess.BB_SQUARES[square])})


def encode_pieces(moves: Sequence[str]) -> bytes:
    """Version 2: two bytes a ply (module docstring); DataError for an illegal move."""
    board = chess.Board()
    out = bytearray()
    for ply, uci in enumerate(moves):
        try:
            move = chess.Move.from_uci(uci)
        except ValueError:
            raise DataError(f"ply {ply + 1}: {uci!r} is not a UCI move") from None
        if not board.is_legal(move):
            raise DataError(f"ply {ply + 1}: {uci!r} is not a legal move in {board.fen()}")
        own = list(chess.scan_forward(board.occupied_co[board.turn]))
        out.append(own.index(move.from_square))
        out.append(_destinations(board, move.from_square).index(move.to_square) | _PROMOTION_CODE[move.promotion] << 5)
        board.push(move)
    return bytes(out)


def _decode_pieces(data: bytes) -> list[str]:
    if len(data) % 2:
        raise DataError(f"{len(data)} bytes: version 2 games take two bytes a ply")
    board = chess.Board()
    moves = []
    for k in range(0, len(data), 2):
        piece, code = data[k], data[k + 1]
        own = list(chess.scan_forward(board.occupied_co[board.turn]))
        if piece >= len(own):
            raise DataError(f"ply {k // 2 + 1}: piece {piece} but the side to move has {len(own)} pieces")
        square = own[piece]
        dests = _destinations(board, square)
        to, promotion = code & 31, code >> 5
        if to >= len(dests) or promotion >= len(_PROMOTIONS):
            raise DataError(f"ply {k // 2 + 1}: destination {to} of {len(dests)}, promotion code {promotion}")
        move = chess.Move(square, dests[to], _PROMOTIONS[promotion])
        board.push(move)  # pseudo-legal by construction; legal unless it leaves the king attacked
        if board.was_into_check():
            board.pop()
            raise DataError(f"ply {k // 2 + 1}: {move.uci()} is not a legal move in {board.fen()}")
        moves.append(move.uci())
    return moves


def _encode_chunk(
    games: list[tuple[list[str], str | None, str]], version: int = 1
) -> tuple[list[tuple[bytes, str | None, str]], list[str]]:
    encode = encode_pieces if version == 2 else encode_moves
    packed, problems = [], []
    for moves, termination, result in games:
        try:
            packed.append((encode(moves), termination, result))
        except DataError as exc:
            problems.append(str(exc))
    return packed, problems


def _decode_chunk(
    records: list[tuple[bytes, str | None, str]], version: int = 1
) -> list[tuple[list[str], str | None, str]]:
    return [(decode_moves(data, version), term, result) for data, term, result in records]


def _pack_task(
    games: list[Any], from_version: int, version: int
) -> tuple[list[tuple[bytes, str | None, str]], list[str]]:
    """Encode a chunk of games: LAION rows (``from_version`` 0) or packed records of another
    file (decoded first: repacking)."""
    if from_version:
        decoded, problems = [], []
        for data, term, result in games:
            try:
                decoded.append((decode_moves(data, from_version), term, result))
            except DataError as exc:
                problems.append(str(exc))
        packed, more = _encode_chunk(decoded, version)
        return packed, problems + more
    return _encode_chunk(games, version)


def read_laion(paths: Iterable[Path]) -> Iterator[tuple[list[str], str | None, str]]:
    import pyarrow.parquet as pq

    from training.sources import PARQUET_COLUMNS

    for path in paths:
        table = pq.read_table(path, columns=list(PARQUET_COLUMNS))
        yield from zip(*(table.column(c).to_pylist() for c in PARQUET_COLUMNS), strict=True)


def game_files(sources: Sequence[str | Path]) -> list[Path]:
    """The LAION parquet files and packed files (``.mcg``) of ``sources`` (files or folders)."""
    files: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix in (".parquet", ".mcg") and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{src}: no such file or folder")
    if not files:
        raise DataError(f"no parquet or .mcg file in {', '.join(map(str, sources))}")
    return files


def game_key(moves: Sequence[str]) -> bytes:
    """A game's identity for :func:`seen_games`: its moves packed as format version 2 (equal
    games from the standard position, and only they, share it)."""
    return encode_pieces(moves)


def _packed_moves(header: dict[str, Any], records: list[tuple[bytes, str | None, str]]) -> Iterator[list[str]]:
    return (decode_moves(data, header["version"]) for data, _, _ in records)


def file_moves(path: Path) -> Iterator[list[str]]:
    """The moves (UCI) of each record of one LAION parquet or packed ``.mcg`` file, in order."""
    if path.suffix == ".mcg":
        yield from _packed_moves(*read_packed(path))
    else:
        yield from (moves for moves, _, _ in read_laion([path]))


def game_keys(path: Path) -> list[bytes | None]:
    """The :func:`game_key` of each record of one LAION parquet or packed ``.mcg`` file, in order
    (None for a record that is no game). Version 2 packed records are their keys already; the
    rest are packed here (about 1 ms a game)."""
    if path.suffix == ".mcg":
        header, records = read_packed(path)  # read once: version 1 records are decoded from it below
        if header["version"] == 2:
            return [data for data, _, _ in records]
        games = _packed_moves(header, records)
    else:
        games = file_moves(path)
    keys: list[bytes | None] = []
    for moves in games:
        try:
            keys.append(game_key(moves))
        except DataError:
            keys.append(None)  # a corrupt record is no game a model could have trained on
    return keys


def seen_games(sources: Sequence[str | Path]) -> set[bytes]:
    """The :func:`game_key` of every game in ``sources`` (packed ``.mcg`` and LAION parquet files,
    or folders of them): e.g. the games a model trained on, to leave out of a held-out set."""
    return {key for path in game_files(sources) for key in game_keys(path) if key is not None}


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def pack_games(sources: Sequence[str | Path], out: str | Path, *, workers: int = 1, version: int = 2) -> dict[str, Any]:
    """Pack the games of ``sources`` (LAION parquet or packed files, or folders of them) into
    ``out`` (format ``version`` 1 or 2: the module docstring). Packed sources are decoded and
    encoded again: a version 1 file becomes version 2 so."""
    if version not in BYTES_PER_PLY:
        raise DataError(f"packed format version {version}: there are versions 1 and 2")
    files = game_files(sources)
    tasks: list[tuple[list[Any], int, int]] = []
    for f in files:
        if f.suffix == ".mcg":  # repack: another version, or several files into one
            header, records = read_packed(f)
            tasks += [(c, header["version"], version) for c in _chunks(records, 1000)]
        else:
            tasks += [(c, 0, version) for c in _chunks(list(read_laion([f])), 1000)]
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            parts = pool.starmap(_pack_task, tasks)
    else:
        parts = [_pack_task(*t) for t in tasks]
    packed = [g for part, _ in parts for g in part]
    problems = [p for _, part in parts for p in part]
    results = sorted({r for _, _, r in packed})
    terminations = sorted({t for _, t, _ in packed if t is not None})
    if len(terminations) >= NO_TERMINATION or len(results) > 255:
        raise DataError(f"too many distinct terminations ({len(terminations)}) or results ({len(results)}) to pack")
    header = {"games": len(packed), "version": version, "results": results, "terminations": terminations,
              "source": [str(f) for f in files][:5] + (["..."] if len(files) > 5 else []),
              "skipped": len(problems), "skipped_first": problems[:3]}  # fmt: skip
    r_index = {r: i for i, r in enumerate(results)}
    t_index = {t: i for i, t in enumerate(terminations)}
    body = bytearray()
    width = BYTES_PER_PLY[version]
    for data, term, result in packed:
        plies = len(data) // width
        if plies > 0xFFFF:
            raise DataError(f"a game of {plies} plies is longer than the format allows (65,535)")
        body += struct.pack("<BBH", r_index[result], NO_TERMINATION if term is None else t_index[term], plies)
        body += data
    head = json.dumps(header).encode()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    magic = MAGIC2 if version == 2 else MAGIC
    tmp.write_bytes(lzma.compress(magic + struct.pack("<I", len(head)) + head + bytes(body), preset=9))
    tmp.replace(out)
    return {"games": len(packed), "skipped": len(problems), "skipped_first": problems[:3],
            "bytes": out.stat().st_size, "bytes_per_game": round(out.stat().st_size / max(1, len(packed)), 1),
            "source_bytes": sum(f.stat().st_size for f in files)}  # fmt: skip


def _parse_header(raw: bytes, path: Path) -> tuple[dict[str, Any], int]:
    """The header at the start of a packed file's decompressed bytes (its ``version`` the one
    its magic says), and where the games start. DataError for a wrong magic; a header cut
    short or not JSON raises ``struct.error`` / ``json.JSONDecodeError`` for the caller."""
    version = MAGICS.get(raw[: len(MAGIC)])
    if version is None:
        raise DataError(f"{path}: not a packed games file (no {MAGIC!r} or {MAGIC2!r} at the start)")
    (n,) = struct.unpack_from("<I", raw, len(MAGIC))
    start = len(MAGIC) + 4
    header: dict[str, Any] = json.loads(raw[start : start + n])
    header["version"] = version
    return header, start + n


def packed_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a packed file (``games``, ...), decompressing only its start."""
    path = Path(path)
    dec = lzma.LZMADecompressor()
    raw = b""
    start = len(MAGIC) + 4  # the header follows the magic and its 4-byte length
    try:
        with path.open("rb") as f:
            while len(raw) < start or len(raw) < start + struct.unpack_from("<I", raw, len(MAGIC))[0]:
                if len(raw) >= len(MAGIC) and raw[: len(MAGIC)] not in MAGICS:
                    break  # not a packed file: _parse_header says so
                block = f.read(1 << 16)
                if not block:
                    raise EOFError("the file ends inside its header")
                raw += dec.decompress(block)
        return _parse_header(raw, path)[0]
    except (lzma.LZMAError, EOFError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a packed games file ({type(exc).__name__}: {exc})") from None


def read_packed(path: str | Path) -> tuple[dict[str, Any], list[tuple[bytes, str | None, str]]]:
    """The header and the packed records of a file written by :func:`pack_games`. The
    header's ``version`` (1 or 2) is the one its magic says: :func:`decode_moves` needs it."""
    path = Path(path)
    try:
        raw = lzma.decompress(path.read_bytes())
    except (lzma.LZMAError, EOFError) as exc:
        raise DataError(f"{path}: not a packed games file (xz: {exc})") from None
    try:
        header, pos = _parse_header(raw, path)
        width = BYTES_PER_PLY[header["version"]]
        results, terminations = header["results"], header["terminations"]
        records = []
        for g in range(int(header["games"])):
            r, t, plies = struct.unpack_from("<BBH", raw, pos)
            pos += 4
            size = plies * width
            if pos + size > len(raw):
                raise DataError(f"{path}: game {g + 1} is cut off (the file is truncated)")
            records.append((raw[pos : pos + size], None if t == NO_TERMINATION else terminations[t], results[r]))
            pos += size
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
    version = header["version"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chunks = _chunks(records, chunk_games)
    if workers > 1 and len(chunks) > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            decoded = pool.starmap(_decode_chunk, [(c, version) for c in chunks])
    else:
        decoded = [_decode_chunk(c, version) for c in chunks]
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
