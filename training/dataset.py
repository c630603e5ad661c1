"""``mistral-chess dataset build``: games -> examples on disk, in parallel, with stats.

The main process reads the sources (:mod:`training.sources`) into work units and
writes the results; worker processes convert (replay, check, filter), make the
examples (:mod:`training.examples`) and tokenize them. Units are consumed in order,
so the output does not depend on the number of workers, and ``max_games`` caps are
exact.

Output folder::

    train-00000.parquet ...        columns: game kind ply prompt completion eos fen
    validation-00000.parquet ...            [input_ids prompt_tokens]  (when tokenized)
    eval-00000.parquet ...         next-move positions of the validation games (fen set; not tokenized)
    tokenizer/                     the tokenizer the ids come from
    stats.json                     counts, corrupt records by kind, tokens, speed
    corrupt.jsonl                  every corrupt record with its file and row/game index
    dataset_config.yaml            the resolved config
    games.keys                     the moves key (16 bytes) of every game used, sorted: what
                                   ``exclude`` reads to leave these games out of another build

The split is by game (a hash of the moves), never by position. ``merge_datasets``
(``dataset merge``) joins data sets built with the same settings into one, so a build
can be made in parts (each later part with ``exclude`` of the earlier ones).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Any

from loguru import logger

from training.config import DatasetConfig
from training.errors import DataError
from training.examples import Example, ExampleMaker, ExampleTokenizer, add_legal_ids, positions_fen, split_of
from training.sources import CorruptRecord, Filtered, WorkUnit, convert, expand_source, iter_units

SPLITS = ("train", "validation", "eval")  # eval: next-move positions of validation games (generation metrics)
STATS_FILE = "stats.json"
KEYS_FILE = "games.keys"
KEY_BYTES = 16  # sources.moves_key


# -- worker side ---------------------------------------------------------------------------------


@dataclasses.dataclass
class UnitResult:
    n: int  # records in the unit
    status: list[str]  # per record: "ok", "filtered:<reason>", "corrupt:<kind>"
    corrupt: list[tuple[int, dict[str, Any]]]  # (record index in unit, record)
    tables: dict[str, Any]  # split -> pyarrow.Table (with a game_seq column)
    too_long: list[int]  # record index of each dropped example
    counts: dict[str, int]  # worker diagnostics (tokenization paths, draws skipped)
    mismatch: str | None = None
    keys: dict[int, bytes] = dataclasses.field(default_factory=dict)  # record index -> moves key, "ok" records


class _Worker:
    def __init__(self, cfg: DatasetConfig, tokenizer_dir: str | None) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.cfg = cfg
        chat = None
        from engine.prompt import PromptTemplate

        if PromptTemplate.load(cfg.examples.template).kind == "instruct":
            if tokenizer_dir is None:
                raise DataError("an instruct template needs a tokenizer (its chat template): set tokenizer")
            from transformers import AutoTokenizer

            chat = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.maker = ExampleMaker(cfg, chat_tokenizer=chat)
        self.eval_maker = ExampleMaker(cfg, chat_tokenizer=chat, eval_positions=True)
        self.tokenizer: ExampleTokenizer | None = None
        if tokenizer_dir is not None:
            backend, eos_id = load_backend_tokenizer(tokenizer_dir)
            self.tokenizer = ExampleTokenizer(backend, eos_id=eos_id, verify_every=cfg.verify_tokens_every)
        self.legal = cfg.examples.legal_tokens

    def run(self, src_index: int, unit: WorkUnit) -> UnitResult:
        src = self.cfg.sources[src_index]
        status: list[str] = []
        corrupt: list[tuple[int, dict[str, Any]]] = []
        per_game: list[tuple[int, str, list[Example]]] = []
        keys: dict[int, bytes] = {}
        split_cfg = self.cfg.split
        plans: list[Any] = [[], []]  # the last game's example plan and eval plan

        def san_needed(n: int, result: str, key: bytes, root_fen: str) -> int:
            plans[0] = self.maker.plan(n, result, key, root_fen)
            need = self.maker.sans_needed(plans[0], n, key)
            plans[1] = []
            if split_cfg.eval_positions_per_game and split_of(key, split_cfg.validation_fraction, split_cfg.seed) != "train":
                plans[1] = self.eval_maker.plan(n, result, key, root_fen)
                need = max(need, self.eval_maker.sans_needed(plans[1], n, key))
            return need

        for seq, raw in enumerate(unit.raw_games()):
            plans[0] = plans[1] = []
            got = convert(raw, src, san_needed)
            if isinstance(got, CorruptRecord):
                status.append("corrupt:" + got.kind)
                corrupt.append((seq, got.as_dict()))
                continue
            if isinstance(got, Filtered):
                status.append("filtered:" + got.reason)
                continue
            status.append("ok")
            keys[seq] = got.key
            split = split_of(got.key, split_cfg.validation_fraction, split_cfg.seed)
            # LAION records were planned before their replay; PGN games are planned now.
            planned = raw.pgn is None
            exs = self.maker.examples(got, plans[0] if planned else None)
            if self.legal:
                assert self.tokenizer is not None  # DatasetConfig refuses legal_tokens without one
                add_legal_ids(got, exs, self.tokenizer.first_token)
            per_game.append((seq, split, exs))
            if split == "validation" and split_cfg.eval_positions_per_game:
                evals = self.eval_maker.examples(got, plans[1] if planned else None)
                per_game.append((seq, "eval", evals))
                fens = positions_fen(got, [e.ply for e in exs + evals])
                for e in exs + evals:
                    e.fen = fens[e.ply]
        if self.tokenizer is not None:  # eval positions are tokenized by the trainer, as prompts
            self.tokenizer.tokenize([exs for _, split, exs in per_game if split != "eval"])
        tables, too_long = self._tables(per_game)
        counts = dict(self.maker.counts)
        self.maker.counts.clear()
        self.eval_maker.counts.clear()
        mismatch = None
        if self.tokenizer is not None:
            counts.update({f"tokens_{k}": v for k, v in self.tokenizer.counts.items()})
            self.tokenizer.counts.clear()
            mismatch, self.tokenizer.mismatch = self.tokenizer.mismatch, None
        return UnitResult(len(status), status, corrupt, tables, too_long, counts, mismatch, keys)

    def _tables(self, per_game: list[tuple[int, str, list[Example]]]) -> tuple[dict[str, Any], list[int]]:
        import pyarrow as pa

        cols: dict[str, dict[str, list[Any]]] = {s: collections.defaultdict(list) for s in SPLITS}
        too_long: list[int] = []
        tokenized = self.tokenizer is not None
        for seq, split, exs in per_game:
            c = cols[split]
            for e in exs:
                if e.input_ids is not None and len(e.input_ids) > self.cfg.max_length:
                    too_long.append(seq)
                    continue
                c["game_seq"].append(seq)
                c["game"].append(e.game)
                c["kind"].append(e.kind)
                c["ply"].append(e.ply)
                c["prompt"].append(e.prompt.text)
                c["completion"].append(e.completion)
                c["eos"].append(e.eos)
                c["fen"].append(e.fen)
                if tokenized:
                    c["input_ids"].append(e.input_ids)
                    c["prompt_tokens"].append(e.prompt_tokens)
                if self.legal:
                    c["legal_ids"].append(e.legal_ids or [])
        schema = output_schema(tokenized=tokenized, with_seq=True, legal=self.legal)
        tables = {s: pa.Table.from_pydict({f.name: cols[s][f.name] for f in schema}, schema=schema) for s in SPLITS}
        return tables, too_long


def output_schema(*, tokenized: bool, with_seq: bool = False, legal: bool = False) -> Any:
    import pyarrow as pa

    fields = [("game_seq", pa.int32())] if with_seq else []
    fields += [
        ("game", pa.string()),
        ("kind", pa.string()),
        ("ply", pa.int32()),
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("eos", pa.bool_()),
        ("fen", pa.string()),
    ]
    if tokenized:
        fields += [("input_ids", pa.list_(pa.int32())), ("prompt_tokens", pa.int32())]
    if legal:
        fields += [("legal_ids", pa.list_(pa.list_(pa.int32())))]
    return pa.schema(fields)


_WORKER: _Worker | None = None


def _init_worker(cfg: DatasetConfig, tokenizer_dir: str | None) -> None:
    global _WORKER
    _WORKER = _Worker(cfg, tokenizer_dir)


def _adopt_worker(worker: _Worker) -> None:
    import gc

    global _WORKER
    _WORKER = worker
    gc.freeze()  # the inherited heap (transformers and all) is never garbage: keep the collector off it
    # A replay allocates two objects a ply, nearly all freed at once by reference counting;
    # collecting the young generation every 700 allocations cost ~4% of the worker's time.
    gc.set_threshold(50_000, 20, 20)


def _run_unit(src_index: int, unit: WorkUnit) -> UnitResult:
    assert _WORKER is not None
    return _WORKER.run(src_index, unit)


# -- tokenizer -----------------------------------------------------------------------------------


def load_backend_tokenizer(folder: str | Path) -> tuple[Any, int | None]:
    """The fast (Rust) tokenizer of a folder and its EOS id, without importing transformers."""
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"{folder}: no tokenizer.json (save the tokenizer with a fast tokenizer)")
    tok = Tokenizer.from_file(str(path))
    eos_id = None
    cfg_file = Path(folder) / "tokenizer_config.json"
    if cfg_file.is_file():
        eos = json.loads(cfg_file.read_text()).get("eos_token")
        if isinstance(eos, dict):
            eos = eos.get("content")
        if isinstance(eos, str):
            eos_id = tok.token_to_id(eos)
    return tok, eos_id


def tokenizer_fingerprint(backend: Any) -> str:
    """Identifies a tokenizer's behaviour (vocabulary, merges, normalisation, special tokens)."""
    return hashlib.sha256(backend.to_str().encode()).hexdigest()[:16]


def prepare_tokenizer(spec: str, folder: Path) -> Path | None:
    """Resolve ``tokenizer`` of the config into ``folder`` (a saved fast tokenizer), or None."""
    if not spec:
        return None
    if spec == "mistral":
        from engine.tiny import write_mistral_tokenizer

        return write_mistral_tokenizer(folder)
    src = Path(spec).expanduser()
    if not src.is_dir():
        raise DataError(f"tokenizer {spec!r}: no such folder (or use 'mistral', or '' for text only)")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(src))
    except Exception as exc:
        raise DataError(f"tokenizer {spec!r}: cannot be loaded ({exc})") from None
    if not getattr(tok, "is_fast", False):
        raise DataError(f"tokenizer {spec!r}: only fast (tokenizers-backed) tokenizers are supported")
    tok.save_pretrained(str(folder))
    return folder


# -- main side -------------------------------------------------------------------------------------


class _Writer:
    """Parquet shards per split, ``shard_examples`` rows each."""

    def __init__(self, folder: Path, split: str, schema: Any, shard_rows: int) -> None:
        self.folder, self.split, self.schema, self.shard_rows = folder, split, schema, shard_rows
        self.writer: Any = None
        self.in_shard = 0
        self.shards = 0
        self.rows = 0

    def write(self, table: Any) -> None:
        import pyarrow.parquet as pq

        offset = 0
        while offset < table.num_rows:
            if self.writer is None:
                path = self.folder / f"{self.split}-{self.shards:05d}.parquet"
                # No dictionary for the token ids: with a 32k vocabulary it costs ~40% of the
                # writing time (the main process's largest share of a build) for 12% smaller files.
                plain = [n for n in self.schema.names if n != "input_ids"]
                self.writer = pq.ParquetWriter(path, self.schema, compression="zstd", use_dictionary=plain)
                self.shards += 1
                self.in_shard = 0
            take = min(table.num_rows - offset, self.shard_rows - self.in_shard)
            self.writer.write_table(table.slice(offset, take), row_group_size=8192)
            offset += take
            self.in_shard += take
            self.rows += take
            if self.in_shard >= self.shard_rows:
                self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@dataclasses.dataclass
class _Tally:
    games_read: int = 0
    games_used: int = 0
    games_by_split: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    filtered: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    corrupt: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    corrupt_examples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    examples: dict[str, collections.Counter[str]] = dataclasses.field(
        default_factory=lambda: {s: collections.Counter() for s in SPLITS}
    )
    tokens: dict[str, collections.Counter[str]] = dataclasses.field(
        default_factory=lambda: {s: collections.Counter() for s in SPLITS}
    )
    max_tokens: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    too_long: int = 0
    worker: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    mismatches: list[str] = dataclasses.field(default_factory=list)
    keys: list[bytes] = dataclasses.field(default_factory=list)  # moves keys of the games used


def read_keys(folder: str | Path) -> set[bytes]:
    """The moves keys of the games a built data set holds (its ``games.keys``)."""
    path = Path(folder) / KEYS_FILE
    if not path.is_file():
        raise DataError(
            f"{folder}: a data set without {KEYS_FILE} (built before it was written): give its game "
            "files to exclude instead, or build it again"
        )
    data = path.read_bytes()
    if len(data) % KEY_BYTES:
        raise DataError(f"{path}: {len(data)} bytes, not a whole number of {KEY_BYTES}-byte keys (the file is damaged)")
    return {data[i : i + KEY_BYTES] for i in range(0, len(data), KEY_BYTES)}


def excluded_keys(paths: list[str]) -> set[bytes]:
    """The moves keys of the games to leave out of a build (``exclude``): of each built data set
    folder (``stats.json`` beside ``games.keys``) or of the games in LAION parquet and packed
    ``.mcg`` files (or folders of them), hashed as the build hashes games from the start."""
    from training.packgames import file_moves, game_files
    from training.sources import STANDARD_FEN, moves_key

    keys: set[bytes] = set()
    for raw in paths:
        p = Path(raw)
        if p.is_dir() and (p / STATS_FILE).is_file():
            keys |= read_keys(p)
            continue
        try:
            files = game_files([p])
        except DataError as exc:
            raise DataError(f"exclude: {exc}") from None
        for f in files:
            keys.update(moves_key(STANDARD_FEN, moves) for moves in file_moves(f) if moves)
    return keys


def build_dataset(cfg: DatasetConfig, *, progress_bar: bool = True) -> dict[str, Any]:
    """Build the data set of ``cfg`` into ``cfg.out``; returns the stats (also in stats.json)."""
    import multiprocessing as mp

    from tqdm import tqdm

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise DataError(f"output folder {out} exists and is not empty (set overwrite=true to replace it)")
    files = [(i, path, fmt) for i, src in enumerate(cfg.sources) for path, fmt in expand_source(src)]
    excluded = excluded_keys(cfg.exclude) if cfg.exclude else set()
    if cfg.exclude:
        logger.info("dataset: leaving out {} distinct games of {}", len(excluded), ", ".join(cfg.exclude))
    work = out.with_name(out.name + ".partial")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        tok_dir = prepare_tokenizer(cfg.tokenizer, work / "tokenizer")
        schema = output_schema(tokenized=tok_dir is not None, legal=cfg.examples.legal_tokens)
        writers = {s: _Writer(work, s, schema, cfg.shard_examples) for s in SPLITS}
        tally = _Tally()
        corrupt_log = (work / "corrupt.jsonl").open("w", encoding="utf-8")  # noqa: SIM115 - closed below
        workers = cfg.worker_count
        logger.info("dataset: {} file(s), {} worker(s) -> {}", len(files), workers, out)
        t0 = time.perf_counter()
        bar = tqdm(total=_known_total(cfg, files), unit="game", desc="dataset", disable=not progress_bar, smoothing=0.05)
        pool: Any = None
        try:
            local = _Worker(cfg, str(tok_dir) if tok_dir else None)
            fingerprint = tokenizer_fingerprint(local.tokenizer.tok) if local.tokenizer is not None else None
            if workers > 1:
                if "fork" in mp.get_all_start_methods():
                    # Forked workers inherit the worker made here (tokenizer loaded and checked once).
                    pool = mp.get_context("fork").Pool(workers, _adopt_worker, (local,))
                else:
                    pool = mp.get_context("spawn").Pool(workers, _init_worker, (cfg, str(tok_dir) if tok_dir else None))
                submit = lambda i, u: pool.apply_async(_run_unit, (i, u))  # noqa: E731
            else:
                submit = lambda i, u: _Done(local.run(i, u))  # noqa: E731
            _drive(cfg, files, submit, 2 * workers + 2, tally, writers, corrupt_log, bar, excluded)
        finally:
            bar.close()
            if pool is not None:
                pool.terminate()
                pool.join()
            for w in writers.values():
                w.close()
            corrupt_log.close()
        seconds = time.perf_counter() - t0
        stats = _stats(cfg, tally, writers, seconds, workers, tok_dir, fingerprint)
        total = writers["train"].rows + writers["validation"].rows
        if total == 0:
            raise DataError(_empty_message(tally))
        if cfg.split.validation_fraction > 0 and writers["validation"].rows == 0:
            logger.warning("no validation examples: too few games for validation_fraction={}", cfg.split.validation_fraction)
        for m in tally.mismatches:
            logger.warning(m)
        _publish(work, out, stats, tally.keys, cfg)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info(
        "dataset: {} games -> {} train / {} validation examples in {:.1f}s ({:.0f} games/s); {} corrupt, {} filtered",
        tally.games_used, writers["train"].rows, writers["validation"].rows, seconds,
        stats["speed"]["games_per_s"], sum(tally.corrupt.values()), sum(tally.filtered.values()),
    )  # fmt: skip
    return stats


def _publish(work: Path, out: Path, stats: dict[str, Any], keys: Any, config: Any) -> None:
    """The finished data set in ``work``: its stats, games.keys and config written, then put
    in ``out``'s place in one rename (an earlier ``out`` goes first)."""
    from engine.configtools import dump_yaml

    (work / STATS_FILE).write_text(json.dumps(stats, indent=1))
    (work / KEYS_FILE).write_bytes(b"".join(sorted(keys)))
    dump_yaml(config, work / "dataset_config.yaml")
    if out.exists():
        shutil.rmtree(out)
    os.replace(work, out)


def _known_total(cfg: DatasetConfig, files: list[tuple[int, Path, str]]) -> int | None:
    """Records to read, when every file is parquet (its footer says) or packed (its header
    says); None for PGN."""
    if any(fmt == "pgn" for _, _, fmt in files):
        return None
    import pyarrow.parquet as pq

    from training.packgames import packed_header

    per_source: dict[int, int] = {}
    for i, path, fmt in files:
        try:
            n = int(packed_header(path)["games"]) if fmt == "packed" else pq.ParquetFile(path).metadata.num_rows
        except Exception:  # an unreadable file is reported when it is read
            continue
        per_source[i] = per_source.get(i, 0) + n
    total = sum(min(n, cfg.sources[i].max_games) if cfg.sources[i].max_games else n for i, n in per_source.items())
    return min(total, cfg.max_games) if cfg.max_games else total


class _Done:
    """An already computed result with the AsyncResult interface (single-process mode)."""

    def __init__(self, value: UnitResult) -> None:
        self.value = value

    def get(self) -> UnitResult:
        return self.value


def _drive(
    cfg: DatasetConfig,
    files: list[tuple[int, Path, str]],
    submit: Any,
    window: int,
    tally: _Tally,
    writers: dict[str, _Writer],
    corrupt_log: Any,
    bar: Any,
    excluded: set[bytes] | None = None,
) -> None:
    """Feed units to the workers (at most ``window`` in flight) and take results in order.
    Games whose key is in ``excluded`` are filtered as ``excluded``."""
    pending: deque[tuple[int, Any]] = deque()
    used_by_source: collections.Counter[int] = collections.Counter()
    stop_source: set[int] = set()
    stop_all = False
    seen: set[bytes] = set()  # moves keys of the games taken so far (dedupe)

    def caps(src_index: int) -> int | None:
        left = []
        src = cfg.sources[src_index]
        if src.max_games:
            left.append(src.max_games - used_by_source[src_index])
        if cfg.max_games:
            left.append(cfg.max_games - tally.games_used)
        return min(left) if left else None

    def take(src_index: int, result: UnitResult) -> None:
        nonlocal stop_all
        if stop_all or src_index in stop_source:
            return
        if excluded:
            result = _drop_keys(result, excluded, "excluded")
        if cfg.dedupe:
            result = _drop_keys(result, seen, "duplicate", remember=True)
        limit = caps(src_index)
        cut = result.n
        if limit is not None:
            ok_seqs = [i for i, s in enumerate(result.status) if s == "ok"]
            if len(ok_seqs) >= limit:
                cut = ok_seqs[limit - 1] + 1 if limit > 0 else 0
                stop_source.add(src_index)
                if cfg.max_games and tally.games_used + limit >= cfg.max_games:
                    stop_all = True
        _account(result, cut, tally, writers, corrupt_log)
        tally.keys.extend(key for seq, key in result.keys.items() if seq < cut)
        used = sum(1 for s in result.status[:cut] if s == "ok")
        used_by_source[src_index] += used
        bar.update(cut)

    for src_index, path, fmt in files:
        if stop_all:
            break
        for item in iter_units(path, fmt, cfg.batch_games):
            if stop_all or src_index in stop_source:
                break
            if isinstance(item, CorruptRecord):
                tally.corrupt[item.kind] += 1
                _log_corrupt(tally, corrupt_log, item.as_dict())
                continue
            pending.append((src_index, submit(src_index, item)))
            while len(pending) >= window:
                i, res = pending.popleft()
                take(i, res.get())
    while pending:
        i, res = pending.popleft()
        take(i, res.get())


def _drop_keys(result: UnitResult, seen: set[bytes], reason: str, *, remember: bool = False) -> UnitResult:
    """``result`` without the games whose key is in ``seen``: their status becomes
    ``filtered:<reason>`` and their examples go. With ``remember`` (``dedupe``) the others'
    keys join ``seen``; games are taken in source order, so the first copy is the one kept."""
    import pyarrow as pa
    import pyarrow.compute as pc

    dup: list[int] = []
    for seq, key in sorted(result.keys.items()):
        if key in seen:
            dup.append(seq)
        elif remember:
            seen.add(key)
    if not dup:
        return result
    drop = set(dup)
    status = [f"filtered:{reason}" if i in drop else s for i, s in enumerate(result.status)]
    gone = pa.array(dup, type=pa.int64())
    tables = {
        split: table.filter(pc.invert(pc.is_in(table["game_seq"].cast(pa.int64()), value_set=gone)))
        for split, table in result.tables.items()
    }
    return dataclasses.replace(
        result,
        status=status,
        tables=tables,
        too_long=[seq for seq in result.too_long if seq not in drop],
        keys={seq: k for seq, k in result.keys.items() if seq not in drop},
    )


def _log_corrupt(tally: _Tally, log: Any, record: dict[str, Any]) -> None:
    log.write(json.dumps(record) + "\n")
    if len(tally.corrupt_examples) < 50:
        tally.corrupt_examples.append(record)


def _account(result: UnitResult, cut: int, tally: _Tally, writers: dict[str, _Writer], corrupt_log: Any) -> None:
    import pyarrow.compute as pc

    tally.games_read += cut
    for s in result.status[:cut]:
        if s == "ok":
            tally.games_used += 1
        elif s.startswith("filtered:"):
            tally.filtered[s[len("filtered:") :]] += 1
        else:
            tally.corrupt[s[len("corrupt:") :]] += 1
    for seq, rec in result.corrupt:
        if seq < cut:
            _log_corrupt(tally, corrupt_log, rec)
    tally.too_long += sum(1 for seq in result.too_long if seq < cut)
    tally.worker.update(result.counts)
    if result.mismatch:
        tally.mismatches.append(result.mismatch)
    for split, table in result.tables.items():
        if cut < result.n:
            table = table.filter(pc.less(table["game_seq"], cut))
        if table.num_rows == 0:
            continue
        if split != "eval":
            tally.games_by_split[split] += len(pc.unique(table["game_seq"]))
        for kind, n in collections.Counter(table["kind"].to_pylist()).items():
            tally.examples[split][kind] += n
        if "input_ids" in table.column_names and split != "eval":
            lengths = pc.list_value_length(table["input_ids"])
            total = int(pc.sum(lengths).as_py())
            prompt = int(pc.sum(table["prompt_tokens"]).as_py())
            tally.tokens[split]["total"] += total
            tally.tokens[split]["completion"] += total - prompt
            tally.max_tokens[split] = max(tally.max_tokens[split], int(pc.max(lengths).as_py()))
        writers[split].write(table.drop_columns(["game_seq"]))


def _stats(
    cfg: DatasetConfig,
    t: _Tally,
    writers: dict[str, _Writer],
    seconds: float,
    workers: int,
    tok_dir: Path | None,
    fingerprint: str | None,
) -> dict[str, Any]:
    from engine.configtools import to_dict

    examples = {s: dict(t.examples[s]) | {"total": writers[s].rows} for s in SPLITS}
    tokens: dict[str, Any] = {}
    if tok_dir is not None:
        for s in ("train", "validation"):
            n = writers[s].rows
            tokens[s] = {
                "total": t.tokens[s]["total"],
                "completion": t.tokens[s]["completion"],
                "mean_per_example": round(t.tokens[s]["total"] / n, 1) if n else 0,
                "max_per_example": t.max_tokens[s],
            }
    return {
        "games": {
            "read": t.games_read,
            "used": t.games_used,
            "with_examples_by_split": dict(t.games_by_split),
            "filtered": dict(t.filtered),
            "corrupt": dict(t.corrupt),
            "skipped_draws": t.worker.get("games_skipped_draw", 0),
        },
        "examples": examples,
        "examples_dropped_too_long": t.too_long,
        "tokens": tokens,
        "tokenizer": None
        if tok_dir is None
        else {
            "folder": "tokenizer",
            "source": cfg.tokenizer,
            "fingerprint": fingerprint,
            "fast_cut": t.worker.get("tokens_fast", 0),
            "fast_words": t.worker.get("tokens_fast_words", 0),  # of fast_cut: from cached word tokens
            "direct": t.worker.get("tokens_direct", 0),
            "verified": t.worker.get("tokens_verified", 0),
            "verify_mismatches": t.worker.get("tokens_verify_mismatch", 0),
        },
        "corrupt_examples": t.corrupt_examples,
        "speed": {
            "seconds": round(seconds, 3),
            "games_per_s": round(t.games_read / seconds, 1) if seconds > 0 else None,
            "workers": workers,
        },
        "files": {s: writers[s].shards for s in SPLITS},
        "config": to_dict(cfg),
    }


def _empty_message(t: _Tally) -> str:
    parts = [f"{t.games_read} record(s) read", f"{t.games_used} usable game(s)"]
    if t.corrupt:
        parts.append("corrupt: " + ", ".join(f"{k} {v}" for k, v in t.corrupt.items()))
    if t.filtered:
        parts.append("filtered: " + ", ".join(f"{k} {v}" for k, v in t.filtered.items()))
    if t.too_long:
        parts.append(f"{t.too_long} example(s) longer than max_length")
    return "the data set has no examples (" + "; ".join(parts) + "): check the sources, filters and example settings"


def read_stats(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / STATS_FILE
    if not path.is_file():
        raise DataError(f"{folder}: not a data set folder (no {STATS_FILE}; build one with `mistral-chess dataset build`)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def split_files(folder: str | Path, split: str) -> list[Path]:
    return sorted(Path(folder).glob(f"{split}-*.parquet"))


# -- merging data sets built in parts --------------------------------------------------------------

# Settings that must be equal for parts to make one data set: the examples (the engine's prompt
# and board windows come from them), the split (a game's side), the length cap and the players
# filter; the tokenizer is compared by its fingerprint.
_MERGE_SAME = ("examples", "split", "max_length", "players")


def merge_datasets(parts: list[str | Path], out: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Join data sets built with the same settings (``_MERGE_SAME``) into ``out``: their shards
    (hard links where the file system allows, else copies; renumbered), one ``games.keys``, the
    corrupt records, and stats that add up the parts' (each part's own stats under ``parts``).
    A game in more than one part is counted and warned about, not removed: build a later part
    with ``exclude`` of the earlier ones to keep each game once. Returns the stats."""
    import pyarrow.parquet as pq

    if len(parts) < 2:
        raise DataError(f"dataset merge: give two or more data sets, not {len(parts)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"output folder {out} exists and is not empty (--overwrite replaces it)")
    folders = [Path(p) for p in parts]
    stats = [read_stats(f) for f in folders]
    configs = [s.get("config") or {} for s in stats]
    for f, s, c in zip(folders[1:], stats[1:], configs[1:], strict=True):
        for key in _MERGE_SAME:
            if c.get(key) != configs[0].get(key):
                raise DataError(
                    f"dataset merge: {f} was built with other {key!r} settings than {folders[0]} "
                    f"({c.get(key)!r} against {configs[0].get(key)!r}); parts must share them"
                )
        fp, fp0 = (s.get("tokenizer") or {}).get("fingerprint"), (stats[0].get("tokenizer") or {}).get("fingerprint")
        if fp != fp0:
            raise DataError(f"dataset merge: {f} is tokenized differently from {folders[0]} ({fp} against {fp0})")
    for split in SPLITS:
        schemas = {str(f): pq.read_schema(p) for f in folders for p in split_files(f, split)[:1]}
        if len({str(sc) for sc in schemas.values()}) > 1:
            raise DataError(f"dataset merge: the {split} files have different columns in {', '.join(schemas)}")
    keys = [read_keys(f) for f in folders]
    total = sum(len(k) for k in keys)
    union = set().union(*keys)
    if len(union) < total:
        logger.warning(
            "dataset merge: {} game(s) are in more than one part (build later parts with exclude=[earlier parts] to "
            "keep each game once)", total - len(union),
        )  # fmt: skip

    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        files = {}
        for split in SPLITS:
            n = 0
            for f in folders:
                for src in split_files(f, split):
                    dst = work / f"{split}-{n:05d}.parquet"
                    try:
                        os.link(src, dst)
                    except OSError:
                        shutil.copyfile(src, dst)
                    n += 1
            files[split] = n
        if (folders[0] / "tokenizer").is_dir():
            shutil.copytree(folders[0] / "tokenizer", work / "tokenizer")
        with (work / "corrupt.jsonl").open("wb") as log:
            for f in folders:
                if (f / "corrupt.jsonl").is_file():
                    log.write((f / "corrupt.jsonl").read_bytes())
        merged = _merged_stats(stats, folders, files, total - len(union))
        _publish(work, out, merged, union, merged["config"])
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info(
        "dataset merge: {} parts -> {}: {} games, {} train / {} validation examples",
        len(folders), out, merged["games"]["used"], merged["examples"]["train"]["total"],
        merged["examples"]["validation"]["total"],
    )  # fmt: skip
    return merged


def _merged_stats(
    stats: list[dict[str, Any]], folders: list[Path], files: dict[str, int], shared_games: int
) -> dict[str, Any]:
    def add(dicts: list[dict[str, Any]]) -> dict[str, Any]:
        total: collections.Counter[str] = collections.Counter()
        for d in dicts:
            total.update({k: v for k, v in (d or {}).items() if isinstance(v, int)})
        return dict(total)

    games = [s["games"] for s in stats]
    merged_games = {
        "read": sum(g["read"] for g in games),
        "used": sum(g["used"] for g in games),
        "with_examples_by_split": add([g.get("with_examples_by_split") or {} for g in games]),
        "filtered": add([g.get("filtered") or {} for g in games]),
        "corrupt": add([g.get("corrupt") or {} for g in games]),
        "skipped_draws": sum(g.get("skipped_draws") or 0 for g in games),
        "in_more_than_one_part": shared_games,
    }
    examples = {split: add([s["examples"].get(split) or {} for s in stats]) for split in SPLITS}
    tokens: dict[str, Any] = {}
    if all(s.get("tokens") for s in stats):
        for split in ("train", "validation"):
            parts = [s["tokens"][split] for s in stats]
            n = examples[split].get("total", 0)
            t = sum(p["total"] for p in parts)
            tokens[split] = {
                "total": t,
                "completion": sum(p["completion"] for p in parts),
                "mean_per_example": round(t / n, 1) if n else 0,
                "max_per_example": max(p["max_per_example"] for p in parts),
            }
    config = dict(stats[0].get("config") or {})
    config["sources"] = [src for s in stats for src in (s.get("config") or {}).get("sources") or []]
    seconds = sum((s.get("speed") or {}).get("seconds") or 0 for s in stats)
    return {
        "games": merged_games,
        "examples": examples,
        "examples_dropped_too_long": sum(s.get("examples_dropped_too_long") or 0 for s in stats),
        "tokens": tokens,
        "tokenizer": stats[0].get("tokenizer"),
        "corrupt_examples": [e for s in stats for e in s.get("corrupt_examples") or []],
        "speed": {"seconds": round(seconds, 3), "games_per_s": round(merged_games["read"] / seconds, 1) if seconds else None},
        "files": files,
        "config": config,
        "parts": [{"path": str(f), "stats": s} for f, s in zip(folders, stats, strict=True)],
    }
