#!/usr/bin/env python3
"""The GPU calls that make the bundled model (v3, v4, v5; issue 8), one phase per device call.

Each phase is self-contained: the lent machine may be a fresh, bare one each call, a
command must end within 540 s, and results come back only through ``$OUT`` (at most 8
files of at most 16 MiB). Stockfish comes from ``.gpu2/stockfish.xz``, chess and loguru
from ``.gpu2/site``; everything else is on the GPU image (Python 3.12, torch+cu130,
transformers, accelerate, matplotlib, pyarrow, tokenizers, tqdm).

Phases
------
``selfplay SEED SECONDS``
    Stockfish self-play on 15 workers for SECONDS (600 nodes +-25% a game, 4-8 random
    plies, 20% of games from the arena's book lines; game i is fixed by (SEED, i)), then
    ``$OUT/selfplay-SEED.tgz``. 75.1 games/s on the H100 host's 16 cores (set V, 2026-12-05:
    31,985 games in 426 s); earlier hosts gave about 50.
``plot STRENGTH_JSON OUT_PNG``
    Redraws the plot of a returned ``strength_vs_steps.json`` (MODEL_TAG names the model
    when the JSON does not).
``strength --log LOG --train-games N --out OUT.json STEP=MATCH_JSON[:ENGINE] ...``
    ``strength_vs_steps.json``, ``.png`` and ``.md`` from arena matches of the run's checkpoints
    played after it (an ``EVAL_OPPONENTS=none`` run rated on the development machine's CPU).
``build``
    Builds the games this call carries (GAMES, BUILD_OVERRIDES as for ``train``) into
    WORK/parts/part-K, for a ``train`` call on the same warm machine, which then builds only
    the sources no part holds (with ``exclude`` of the parts when BUILD_OVERRIDES has
    ``dedupe=true``) and merges the parts (``dataset merge``): the call that only carries
    games does a share of the build, and the train call has that much more time for steps.
``train``
    Unpacks every ``.gpu2/selfplay-*.tgz`` (set A, ``selfplay-35k.tgz``, and those the
    selfplay calls returned), builds the data set on all cores, trains
    ``configs/train/scratch-medium.yaml`` on the GPU with a checkpoint every SAVE_STEPS,
    and meanwhile plays each finished checkpoint on the CPU cores against a random mover
    and Stockfish ``UCI_Elo`` 1350 (arena match, 3+0.05, 10 games at once). A watchdog
    stops training in time for the last evaluation and the packing (SIGTERM: the
    trainer saves a checkpoint at the step in hand, so nothing trained is lost). Returns:
    ``model-v3.tgz.part-NN`` (the engine-loadable model folder, tar.gz split in 15 MiB
    parts: ``cat model-v3.tgz.part-* | tar xz``), ``strength_vs_steps.json`` and ``.png``,
    ``eval_table.md``, ``phase.log`` (this output) and ``report.tgz`` (trainer log, match
    reports and PGNs, data-set stats).

Settings (environment): TRAIN_STEPS (1800), SAVE_STEPS (300), BUDGET_S (510: the phase
ends by then), EVAL_GAMES (40 per opponent), EVAL_CONCURRENCY (10; the matches run under nice so
that the trainer's kernel-launching process keeps its core), EVAL_OPPONENTS
(``random,sf1350``; also ``skill0`` = Stockfish Skill Level 0 at depth 1, ``bundled`` = the model
the repository ships; ``none``: no matches, which leaves the CPU cores to the trainer, the
checkpoints rated afterwards on the development machine), EVAL_TC
(3+0.05), WORKERS (15 for self-play, 16 for the build), NODES (600), WORK (/tmp/bw),
GAMES (what to train on: globs under the repository or absolute, space-separated, of selfplay-*.tgz
tarballs, of folders holding games-*.parquet chunks, or of packed sets ``*.mcg`` from
``gpu_carry.sh --games ... --pack``, 1.7-2.3 times more games a call, which the build decodes as they are;
default .gpu2/selfplay-*.tgz),
TRAIN_CONFIG (configs/train/scratch-medium.yaml), TRAIN_OVERRIDES (more key=value words),
BUILD_OVERRIDES (key=value words for the data-set build of configs/dataset/scratch-games.yaml, e.g.
``examples.positions_per_game=1``: one example a game, its header naming the side to move at ply 0
or 1 at random, instead of both; each pass then shows every game's moves once, not twice; or
``examples.window_plies=16 examples.positions_per_game=4 examples.max_ply=0``: board windows, v13's
first phase, whose model folders then carry ``engine_prompt.yaml`` for the engine and the matches;
``tokenizer=engine/data/bundled-model`` when going on from that model with its tokenizer: the build's
workers tokenize, and the trainer takes the ids as they are instead of tokenizing on one core),
RESUME (1: go on with the run an earlier train call left on this still-warm machine, under
WORK: no unpacking and no build, the trainer resumes from its newest checkpoint (the same
settings and TRAIN_STEPS, so the learning-rate schedule goes on where it stopped), and the
matches already played are kept), DATA_FROM (unset; the WORK folder of an earlier train
call on this warm machine, e.g. /tmp/bw: train on its data set as it is, no build, a second
arm with other TRAIN_OVERRIDES in its own WORK, e.g. WORK=/tmp/bw2 MODEL_TAG=v22c), MODEL_TAG (v3: the returned folder is bundled-TAG, the tarball model-TAG.tgz), FINAL_INT8_GROUP
(unset: the final model's weights come back as the trainer saved them, bf16; N: as int8 with
a scale per N weights, ``mistral-chess export-int8 --group N``: needed above ~20M parameters,
whose bf16 weights would not fit the 8 returned files; a run with ``qat.int4_modules`` saves its
models quantized already), GROW_LAYERS (unset: train TRAIN_CONFIG's model; N: first grow the
shipped model to N layers, ``mistral-chess grow-model --dtype bfloat16``, and train that), FINAL_PICK
(unset: the trainer's final model, else the newest checkpoint; ``eval_loss``: the checkpoint
with the lowest logged validation loss; ``score:OPPONENT``: the checkpoint with the highest
match score against OPPONENT, one of EVAL_OPPONENTS, e.g. ``score:bundled`` with
``EVAL_OPPONENTS=bundled``: each checkpoint plays the model the repository ships now),
SELFPLAY_BESIDE (unset; SEED: self-play on the CPU cores, at the lowest priority, while the GPU
trains, into WORK/selfplay-SEED, a RESUME call going on where it stopped; each call returns the
whole set so far as ``selfplay-SEED.tgz``. Needs EVAL_OPPONENTS=none and Stockfish, which with
the ~48 MB tree travels in parts: ``gpu_carry.sh --stockfish --games ... --pack --split 18``),
SELFPLAY_WORKERS (12: the trainer keeps the other cores), SELFPLAY_OVERRIDES (unset; key=value words for the
self-play recipe of ``selfplay`` and SELFPLAY_BESIDE, after its own, e.g. ``mistake_rate=0.03``: set AL's
kind of games, 3% of the moves after the opening a random legal move).

The device calls, in order (made by the lead with the ``run`` tool; any kind with one GPU)
----------------------------------------------------------------------------------------
Before the first call of a session: ``bash scripts/gpu_carry.sh --stockfish`` (makes
.gpu2/stockfish.xz and .gpu2/site; returned selfplay-*.tgz are not kept across sessions).
Every call: carry [".gpu2"] (git-ignored). Mind the 64 MiB a call may carry: the tracked
tree is about 40 MB (the v3 model), stockfish.xz 21 MB and site/ 1 MB, which leaves room
for about one returned selfplay-*.tgz (~5 MB). Training on a set kept in the history
(datasets/README.md, ``gpu_carry.sh --games``, 24 MB) fits only without Stockfish:
``EVAL_OPPONENTS=random``, the checkpoints rated afterwards on the development machine.
timeout_s 540 for each call.

1. selfplay, ~8.5 min (480 s of play, ~10 s around it; returns selfplay-10.tgz ~5 MB and phase.log):
     export PYTHONPATH=$PWD/.gpu2/site:$PWD PYTHONUNBUFFERED=1; python3 scripts/bundled_gpu.py selfplay 10 480
   then here: cp <files_at>/selfplay-10.tgz .gpu2/
2. (optional, only if ~18 min of device time remain after it) the same with seed 11:
     export PYTHONPATH=$PWD/.gpu2/site:$PWD PYTHONUNBUFFERED=1; python3 scripts/bundled_gpu.py selfplay 11 480
   then here: cp <files_at>/selfplay-11.tgz .gpu2/
3. train, ~8.5 min (unpack + build ~30 s, trainer set-up ~30 s, training until the
   watchdog or TRAIN_STEPS, checkpoints evaluated alongside, packing; ends by BUDGET_S=510 s):
     export PYTHONPATH=$PWD/.gpu2/site:$PWD PYTHONUNBUFFERED=1; python3 scripts/bundled_gpu.py train
   then here: mkdir -p runs/v3 && cat <files_at>/model-v3.tgz.part-* | tar xz -C runs/v3
   (-> runs/v3/bundled-v3, engine-loadable; strength_vs_steps.png/.json are inside too).
   The log prints the trainer's tokens/s: if training was cut well before TRAIN_STEPS, or
   finished with minutes to spare, TRAIN_STEPS=N in front of the command resizes a rerun.
Never more than 8 files come back: the train call returns 3 model parts at most plus
strength_vs_steps.json/.png, eval_table.md, report.tgz and phase.log (with SELFPLAY_BESIDE,
selfplay-SEED.tgz in place of the plot, which needs matches).

Local check of the same code at toy sizes (2-core CPU, the local Stockfish):
    bash scripts/bundled_gpu_smoke.sh
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
T0 = time.monotonic()
PY = sys.executable
PART_BYTES = 15 * 1024 * 1024
OUT_LIMIT = 16 * 1024 * 1024
_log_lock = threading.Lock()


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def out_dir() -> Path:
    out = Path(os.environ.get("OUT") or "/tmp/bundled-out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def work_dir() -> Path:
    w = Path(os.environ.get("WORK") or "/tmp/bw")
    w.mkdir(parents=True, exist_ok=True)
    return w


def elapsed() -> float:
    return time.monotonic() - T0


def say(msg: str) -> None:
    line = f"[{elapsed():6.1f}s] {msg}"
    with _log_lock:
        print(line, flush=True)
        with open(work_dir() / "phase.log", "a") as f:
            f.write(line + "\n")


def stockfish_parts(root: Path) -> list[Path]:
    """The xz-compressed Stockfish that ``gpu_carry.sh --stockfish`` made: ``.gpu2/stockfish.xz``,
    or with ``--split`` its parts ``.gpuK/stockfish.xz.part-NN-of-MM`` over several folders (and
    so several calls), in order; exits naming what is missing when a part has not come yet."""
    whole = root / ".gpu2" / "stockfish.xz"
    if whole.is_file():
        return [whole]
    import re

    parts: dict[int, Path] = {}
    counts: set[int] = set()
    for p in root.glob(".gpu*/stockfish.xz.part-*"):
        m = re.fullmatch(r"stockfish\.xz\.part-(\d+)-of-(\d+)", p.name)
        if m:
            parts[int(m.group(1))] = p
            counts.add(int(m.group(2)))
    if not parts:
        sys.exit(f"no Stockfish: {whole} is missing, no .gpu*/stockfish.xz.part-* either, and STOCKFISH_PATH is not set")
    if len(counts) != 1:
        sys.exit(f"Stockfish parts of different splits: {sorted(p.name for p in parts.values())} (rerun gpu_carry.sh)")
    missing = [i for i in range(counts.pop()) if i not in parts]
    if missing:
        sys.exit(
            f"Stockfish parts {missing} are not here (have {sorted(p.name for p in parts.values())}): "
            "carry every .gpuK folder gpu_carry.sh made before this call"
        )
    return [parts[i] for i in sorted(parts)]


def stockfish() -> str:
    """The Stockfish binary: $STOCKFISH_PATH, else the carried ``stockfish.xz`` (whole or in
    parts, ``stockfish_parts``) unpacked to /tmp/sf."""
    if os.environ.get("STOCKFISH_PATH"):
        return os.environ["STOCKFISH_PATH"]
    sf = Path("/tmp/sf")
    if not sf.is_file():
        packed = stockfish_parts(ROOT)
        tmp = sf.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            joined = b"".join(p.read_bytes() for p in packed)
            subprocess.run(["xz", "-dc"], input=joined, stdout=f, check=True)
        tmp.chmod(0o755)
        tmp.replace(sf)
    out = subprocess.run([str(sf)], input="uci\nquit\n", capture_output=True, text=True, timeout=20).stdout
    name = next((ln for ln in out.splitlines() if ln.startswith("id name")), "?")
    say(f"stockfish: {sf} ({name})")
    return str(sf)


def stop_process(proc: subprocess.Popen[Any], sig: int, grace: float) -> None:
    """Send ``sig`` (the child then finishes what it must: a checkpoint, a manifest) and wait up
    to ``grace`` seconds, then kill it."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def mc(*args: str) -> list[str]:
    return [PY, "-m", "training", *args]


def put_out(path: Path, name: str | None = None) -> None:
    dest = out_dir() / (name or path.name)
    shutil.copyfile(path, dest)
    if dest.stat().st_size > OUT_LIMIT:
        say(f"WARNING: {dest.name} is {dest.stat().st_size / 2**20:.1f} MiB, over the 16 MiB a file that $OUT returns")


def games_in(folder: Path) -> int:
    import re

    n = 0
    for p in folder.glob("games-*.parquet"):
        m = re.match(r"games-(\d+)-(\d+)\.parquet$", p.name)
        if m:
            n += int(m.group(2)) - int(m.group(1))
    return n


# -- selfplay ---------------------------------------------------------------------------------------------


def selfplay_command(seed: int, folder: Path, workers: int, seconds: float, sf: str) -> list[str]:
    """The project's self-play recipe (datasets/README.md) on ``workers`` cores for ``seconds``;
    run again on the same folder, it goes on where the finished chunks stop. A node budget is
    drawn for every move (``jitter_per_move``, sets from seed 220 on), so that book games do not
    repeat those of earlier sets (docs/training.md, "Duplicates")."""
    return mc(
        "dataset", "selfplay", "--config", "configs/dataset/selfplay.yaml", "--out", str(folder),
        "--games", "1000000", "--workers", str(workers), "--no-progress",
        f"seed={seed}", f"nodes={env_int('NODES', 600)}", "nodes_jitter=0.25", "jitter_per_move=true",
        "random_plies_min=4", "random_plies_max=8", "book_fraction=0.2",
        "chunk_games=100", f"max_seconds={seconds:.0f}", f"stockfish={sf}",
        *selfplay_overrides(),
    )  # fmt: skip


def selfplay_overrides() -> list[str]:
    """SELFPLAY_OVERRIDES, checked: more key=value words for the self-play recipe, after its own
    (so they win), e.g. ``mistake_rate=0.03`` for set AL's kind of games. The keys themselves are
    checked by ``dataset selfplay``, which names a wrong one before any game is played."""
    from engine.configtools import parse_overrides
    from engine.errors import ConfigError

    def is_override(word: str) -> bool:
        try:
            parse_overrides([word])  # the rule ``dataset selfplay`` reads the words by
        except ConfigError:
            return False
        return True

    words = (os.environ.get("SELFPLAY_OVERRIDES") or "").split()
    bad = [w for w in words if not is_override(w)]
    if bad:
        sys.exit(f"SELFPLAY_OVERRIDES: {' '.join(bad)} is not key=value (e.g. SELFPLAY_OVERRIDES='mistake_rate=0.03')")
    return words


def pack_selfplay(folder: Path) -> None:
    """Log what a self-play folder holds and put it into $OUT as ``selfplay-SEED.tgz``."""
    manifest = json.loads((folder / "manifest.json").read_text()) if (folder / "manifest.json").is_file() else {}
    last = manifest.get("last_run")
    if last:
        say(
            f"self-play: {manifest.get('games_written')} games written, {last.get('games_played')} played in "
            f"{last.get('seconds')} s ({last.get('games_per_s')} games/s), {last.get('discarded_too_long')} discarded"
        )
    else:  # stopped by a signal: the manifest lists the finished chunks only
        say(f"self-play: {manifest.get('games_written')} games written in finished chunks (the run was stopped)")
    tgz = work_dir() / f"{folder.name}.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    put_out(tgz)
    say(f"wrote $OUT/{tgz.name}: {tgz.stat().st_size / 2**20:.2f} MiB (copy it into .gpu2/ for the train call)")


def selfplay_beside() -> int | None:
    """SELFPLAY_BESIDE, checked: the seed of self-play on the CPU cores while the GPU trains."""
    raw = os.environ.get("SELFPLAY_BESIDE") or ""
    if not raw:
        return None
    if not raw.isdigit():
        sys.exit(f"SELFPLAY_BESIDE: {raw!r} is not a seed (a whole number, e.g. 160)")
    if eval_opponents():
        sys.exit(
            "SELFPLAY_BESIDE needs EVAL_OPPONENTS=none: the checkpoint matches and the self-play "
            "would share the same CPU cores"
        )
    return int(raw)


def start_selfplay_beside(seed: int | None, work: Path, sf: str, until: float) -> subprocess.Popen[bytes] | None:
    """With SELFPLAY_BESIDE, self-play on SELFPLAY_WORKERS (12) cores at the lowest priority while
    the GPU trains, until ``until`` (time.monotonic()) at the latest, into WORK/selfplay-SEED: a
    RESUME call on the warm machine goes on where the chunks stop (resume is exact)."""
    if seed is None:
        return None
    seconds = until - time.monotonic()
    if seconds < 60:
        say(f"self-play beside training: only {seconds:.0f} s left, not started")
        return None
    folder = work / f"selfplay-{seed}"
    cmd = selfplay_command(seed, folder, env_int("SELFPLAY_WORKERS", 12), seconds, sf)
    say(f"self-play beside training (nice 19), {games_in(folder)} games there already: " + " ".join(cmd[3:]))
    with open(work / f"selfplay-{seed}.log", "a") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=lambda: os.nice(19))


def stop_selfplay_beside(proc: subprocess.Popen[bytes], until: float) -> None:
    """Training is over: let the self-play reach its own time limit ``until`` when that is at
    most 45 s away (its workers then write the games of the chunks they had begun), else stop
    it now (SIGINT: it keeps its finished chunks and writes its manifest; the chunks its workers
    had begun are played again by the next run)."""
    if proc.poll() is None and until - time.monotonic() <= 45:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(1.0, until - time.monotonic() + 15))
    if proc.poll() is None:
        stop_process(proc, signal.SIGINT, 30)
    say(f"self-play beside training: exit {proc.returncode}")


def phase_selfplay(seed: int, seconds: float) -> int:
    sf = stockfish()
    folder = work_dir() / f"selfplay-{seed}"
    cmd = selfplay_command(seed, folder, env_int("WORKERS", 15), seconds, sf)
    say("self-play: " + " ".join(cmd[3:]))
    t = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    while proc.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.returncode is None:
            n = games_in(folder)
            say(f"self-play: {n} games in finished chunks ({n / (time.monotonic() - t):.1f} games/s)")
    if proc.returncode != 0:
        say(f"self-play exited with {proc.returncode}; packing the finished chunks anyway")
    pack_selfplay(folder)
    put_out(work_dir() / "phase.log")
    return 0 if proc.returncode == 0 else 1


# -- train + evaluate -------------------------------------------------------------------------------------


def game_sources(work: Path) -> list[Path]:
    """Every .gpu2/selfplay-*.tgz, each in its own folder; the folders holding parquet chunks,
    and the packed sets (``*.mcg``) as they are: the build's workers decode them."""
    games = work / "games"
    shutil.rmtree(games, ignore_errors=True)
    sources = []
    patterns = (os.environ.get("GAMES") or ".gpu2/selfplay-*.tgz").split()
    # Globs under the repository, or absolute ones (sets unpacked on the machine by an earlier call).
    found = (map(Path, glob.glob(pattern)) if os.path.isabs(pattern) else ROOT.glob(pattern) for pattern in patterns)
    for path in sorted(p for paths in found for p in paths):
        root = path  # a folder of parquet chunks, such as a set restored from the history
        if path.suffix == ".mcg":  # a set packed by gpu_carry.sh --pack (training/packgames.py)
            from training.packgames import packed_header

            say(f"games: {path.name}: {packed_header(path)['games']} packed games (decoded by the build)")
            sources.append(path)
            continue
        if not path.is_dir():
            root = games / path.name.removesuffix(".tgz")
            root.mkdir(parents=True)
            with tarfile.open(path) as tar:
                tar.extractall(root, filter="data")
        folders = sorted({p.parent for p in root.rglob("games-*.parquet")})
        for f in folders:
            say(f"games: {path.name}: {f.relative_to(root)}: {games_in(f)} games")
        sources += folders
    if not sources:
        sys.exit(f"no games in {' '.join(patterns)}")
    return sources


OPPONENTS: dict[str, list[str]] = {
    "random": [f"cmd={PY} tests/arena/engines/random_engine.py", "name=random"],
    "sf1350": ["stockfish:1350", "name=sf1350"],
    "skill0": ["stockfish", "option.Skill Level=0", "depth=1", "name=sf-skill0-d1"],
    # the model the repository ships now (the one a new run must beat), on the CPU like the checkpoint
    "bundled": ["mistral:engine/data/bundled-model", "name=bundled", "model.threads=1", "model.device=cpu",
                "time.move_overhead_ms=30"],
}


def eval_opponents() -> list[str]:
    """EVAL_OPPONENTS, checked against OPPONENTS; ``none``: no matches."""
    raw = os.environ.get("EVAL_OPPONENTS") or "random,sf1350"
    if raw.strip().lower() == "none":
        return []
    opponents = [o for o in raw.split(",") if o]
    bad = [o for o in opponents if o not in OPPONENTS]
    if bad:
        sys.exit(f"EVAL_OPPONENTS: unknown {bad} (known: {sorted(OPPONENTS)})")
    return opponents


def needs_stockfish(opponents: list[str]) -> bool:
    return any(OPPONENTS[o][0].startswith("stockfish") for o in opponents)


OPPONENT_TEXT = {
    "random": "a uniformly random legal mover (tests/arena/engines/random_engine.py)",
    "sf1350": "Stockfish UCI_LimitStrength UCI_Elo 1350 (the lowest it accepts)",
    "skill0": "Stockfish full strength settings but Skill Level 0, depth 1",
    "bundled": "the bundled model the repository shipped when the matches were played (engine/data/bundled-model)",
}


class Evaluator(threading.Thread):
    """Plays every finished checkpoint of the run against the opponents, in step order."""

    def __init__(self, run_dir: Path, work: Path, sf: str, deadline: float) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.work, self.sf, self.deadline = run_dir, work, sf, deadline
        self.games = env_int("EVAL_GAMES", 40)
        self.concurrency = env_int("EVAL_CONCURRENCY", 10)
        self.opponents = eval_opponents()
        self.tc = os.environ.get("EVAL_TC") or "3+0.05"
        self.training_done = threading.Event()
        self.results: list[dict[str, Any]] = []
        self.done_steps: set[int] = set()
        self.match_seconds: list[float] = []
        self.skipped: list[int] = []

    def checkpoints(self) -> dict[int, Path]:
        root = self.run_dir / "checkpoints"
        out = {}
        if root.is_dir():
            for p in root.iterdir():
                if p.name.startswith("step-") and not p.name.endswith(".tmp") and (p / "state.json").is_file():
                    out[int(p.name[5:])] = p
        return out

    def run(self) -> None:
        try:
            while True:
                todo = sorted(set(self.checkpoints()) - self.done_steps)
                if not todo:
                    if self.training_done.is_set():
                        return
                    time.sleep(2)
                    continue
                # Once training has stopped, the newest checkpoint (the shipped model) comes first.
                step = todo[-1] if self.training_done.is_set() else todo[0]
                self.done_steps.add(step)
                self.evaluate(step, self.checkpoints()[step])
        except Exception as exc:  # keep the phase alive: training and packing go on
            say(f"evaluator stopped: {type(exc).__name__}: {exc}")

    def evaluate(self, step: int, ckpt: Path) -> None:
        if not self.opponents:  # EVAL_OPPONENTS=none: nothing to play, nothing to export
            return
        engine_dir = self.work / "engines" / f"step-{step:07d}"
        t = time.monotonic()
        from training.modeling import export_checkpoint

        export_checkpoint(self.run_dir, ckpt, engine_dir)
        say(f"eval: step {step}: exported in {time.monotonic() - t:.1f} s")
        try:  # an engine that cannot load its model plays fallback moves: no match to rate
            from engine.int8store import load_causal_lm

            load_causal_lm(engine_dir)
        except Exception as exc:
            say(f"eval: step {step}: the exported model does not load ({type(exc).__name__}: {exc}); not played")
            self.skipped.append(step)
            return
        for opp in self.opponents:
            left = self.deadline - time.monotonic()
            expected = max(self.match_seconds) if self.match_seconds else 30.0
            if left < expected + 5:
                say(f"eval: step {step} vs {opp}: skipped ({left:.0f} s left, a match takes ~{expected:.0f} s)")
                self.skipped.append(step)
                continue
            self.match(step, engine_dir, opp, timeout=left - 3)

    def match(self, step: int, engine_dir: Path, opp: str, *, timeout: float) -> None:
        stem = self.work / "matches" / f"step-{step:07d}-{opp}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            "nice", "-n", "10", *mc("arena", "match"),
            "--engine", f"mistral:{engine_dir}", f"name=step-{step}", "model.threads=1", "model.device=cpu",
            "time.move_overhead_ms=30",
            "--engine", *OPPONENTS[opp],
            "--games", str(self.games), "--tc", self.tc, "--concurrency", str(self.concurrency),
            *(["--stockfish", self.sf] if self.sf else []),
            "--json", f"{stem}.json", "--pgn", f"{stem}.pgn", "--overwrite", "--quiet",
        ]  # fmt: skip
        t = time.monotonic()
        with open(f"{stem}.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                say(f"eval: step {step} vs {opp}: out of time, stopping the match")
                stop_process(proc, signal.SIGINT, 15)
        secs = time.monotonic() - t
        self.match_seconds.append(secs)
        report = Path(f"{stem}.json")
        if not report.is_file():
            say(f"eval: step {step} vs {opp}: no report (exit {proc.returncode}); see {stem}.log")
            return
        row = self.add_report(step, opp, report, secs)
        say(
            f"eval: step {step} vs {opp}: +{row['wins']} ={row['draws']} -{row['losses']} "
            f"score {row['score']} Elo {row['elo_diff']} [{row['elo_lower']}, {row['elo_upper']}] in {secs:.0f} s"
        )

    def adopt_earlier(self) -> None:
        """RESUME: the matches an earlier call of this run finished count, and their
        checkpoints are not played again."""
        for report in sorted((self.work / "matches").glob("step-*.json")):
            step_text, _, opp = report.stem.removeprefix("step-").partition("-")
            if opp in self.opponents and step_text.isdigit():
                self.add_report(int(step_text), opp, report, 0.0)
                self.done_steps.add(int(step_text))
        if self.done_steps:
            say(f"eval: resumed: matches of steps {sorted(self.done_steps)} kept from the earlier call")

    def add_report(self, step: int, opp: str, report: Path, secs: float) -> dict[str, Any]:
        row = match_row(step, opp, json.loads(report.read_text()), secs, me=f"step-{step}")
        self.results.append(row)
        return row


def match_row(step: int, opp: str, r: dict[str, Any], secs: float | None, *, me: str) -> dict[str, Any]:
    """One row of ``strength_vs_steps.json`` from an arena match report whose engine ME is the checkpoint."""
    elo = r.get("elo") or {}
    mine = (r.get("per_engine") or {}).get(me, {})
    return {
        "step": step, "opponent": opp, "games": r.get("wins", 0) + r.get("draws", 0) + r.get("losses", 0),
        "wins": r.get("wins"), "draws": r.get("draws"), "losses": r.get("losses"), "score": r.get("score"),
        "elo_diff": elo.get("diff"), "elo_lower": elo.get("lower"), "elo_upper": elo.get("upper"),
        "complete": r.get("complete"), "illegal": mine.get("illegal_moves"), "time_losses": mine.get("time_losses"),
        "fallbacks": mine.get("fallbacks"), "seconds": None if secs is None else round(secs, 1),
    }  # fmt: skip


def score_interval(w: int, d: int, n: int) -> tuple[float, float, float]:
    """Score and its 95% interval (normal approximation of the trinomial, clipped to [0, 1])."""
    if n == 0:
        return math.nan, math.nan, math.nan
    s = (w + 0.5 * d) / n
    var = (w * (1 - s) ** 2 + d * (0.5 - s) ** 2 + (n - w - d) * s**2) / n
    half = 1.96 * math.sqrt(var / n)
    return s, max(0.0, s - half), min(1.0, s + half)


def write_strength(ev: Evaluator, run_dir: Path, train_games: int, out_json: Path, out_png: Path, table: Path) -> None:
    state = {}
    for step, ckpt in ev.checkpoints().items():
        with contextlib.suppress(OSError, ValueError):
            state[step] = json.loads((ckpt / "state.json").read_text())
    doc = strength_doc(
        ev.results, run_dir / "log.jsonl", train_games, tc=ev.tc, games_per_match=ev.games,
        opponents=ev.opponents, skipped=ev.skipped, tokens={s: st.get("tokens") for s, st in state.items()},
    )  # fmt: skip
    save_strength(doc, out_json, table, out_png)


def save_strength(doc: dict[str, Any], out_json: Path, table: Path, out_png: Path) -> str:
    """Writes ``strength_vs_steps.json``'s document, its Markdown table and its plot; returns the table."""
    text = strength_table(doc["results"])
    out_json.write_text(json.dumps(doc, indent=1))
    table.write_text(text)
    plot_strength(doc, out_png)
    return text


def strength_doc(
    results: list[dict[str, Any]], log: Path, train_games: int, *, tc: str, games_per_match: int | str,
    opponents: list[str], skipped: list[int] | tuple[int, ...] = (), tokens: dict[int, Any] | None = None,
    what: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``strength_vs_steps.json``'s document: each match row with its score interval, and, from the
    run's ``log.jsonl``, the games seen at its step and the validation figures logged there."""
    epochs: dict[int, float] = {}
    evals: dict[int, dict[str, Any]] = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                e = json.loads(line)
                if "epoch" in e:
                    epochs[e["step"]] = e["epoch"]
                if "legal_rate" in e:
                    evals[e["step"]] = e

    def games_seen(step: int) -> int | None:
        known = [s for s in epochs if s <= step]
        return round(epochs[max(known)] * train_games) if known and train_games else None

    rows = sorted(results, key=lambda r: (r["step"], r["opponent"]))
    for r in rows:
        s, lo, hi = score_interval(r["wins"] or 0, r["draws"] or 0, r["games"])
        r.update(score_lower=round(lo, 4), score_upper=round(hi, 4), games_seen=games_seen(r["step"]))
        r["tokens_seen"] = (tokens or {}).get(r["step"])
        e = evals.get(r["step"], {})
        r.update(eval_loss=e.get("eval_loss"), legal_rate=e.get("legal_rate"), exact_move=e.get("exact_move_accuracy"))
    return {
        "what": what or f"each training checkpoint of the {model_tag()} run against fixed opponents, arena match",
        "model_tag": model_tag(),
        "time_control": tc, "games_per_match": games_per_match,
        "opponents": {o: OPPONENT_TEXT[o] for o in opponents},
        "score": "wins + draws/2 over games, with a 95% normal-approximation interval; "
        "elo_*: the arena's Elo difference to the opponent (trinomial, 95%)",
        "games_seen": "epoch at the step x training games",
        "train_games": train_games, "skipped_steps": sorted(set(skipped)), "results": rows,
    }  # fmt: skip


def strength_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| step | games seen | opponent | games | W | D | L | score (95%) | Elo diff (95%) | val loss | legal rate |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['step']} | {r['games_seen'] or '?'} | {r['opponent']} | {r['games']} | {r['wins']} | {r['draws']} | "
            f"{r['losses']} | {r['score']:.3f} ({r['score_lower']:.2f}-{r['score_upper']:.2f}) | "
            f"{r['elo_diff']} ({r['elo_lower']}..{r['elo_upper']}) | "
            f"{'' if r['eval_loss'] is None else round(r['eval_loss'], 3)} | "
            f"{'' if r['legal_rate'] is None else round(r['legal_rate'], 3)} |"
        )
    return "\n".join(lines) + "\n"


def strength_from_matches(argv: list[str]) -> int:
    """``strength``: strength_vs_steps.json/.png from arena matches played elsewhere (the
    development machine's CPU, after an ``EVAL_OPPONENTS=none`` run)."""
    import argparse

    ap = argparse.ArgumentParser(prog="bundled_gpu.py strength", description=strength_from_matches.__doc__)
    ap.add_argument("--log", type=Path, required=True, help="the run's log.jsonl (games seen, validation figures)")
    ap.add_argument("--train-games", type=int, required=True, help="training games of the run's data set")
    ap.add_argument("--opponent", default="bundled", choices=sorted(OPPONENT_TEXT), help="whom every match played")
    ap.add_argument("--out", type=Path, required=True, help="the JSON to write; the PNG and table beside it")
    ap.add_argument("matches", nargs="+", metavar="STEP=MATCH_JSON[:ENGINE]",
                    help="a checkpoint's step and its arena match report (ENGINE: its name there; default the "
                    "report's point of view)")  # fmt: skip
    args = ap.parse_args(argv)
    if not args.log.is_file():
        ap.error(f"--log {args.log}: no such file (the run's log.jsonl)")
    rows, tcs, counts = [], set(), set()
    for spec in args.matches:
        step_text, sep, rest = spec.partition("=")
        path_text, _, engine = rest.partition(":")
        if not sep or not step_text.isdigit() or not path_text:
            ap.error(f"{spec!r} is not STEP=MATCH_JSON[:ENGINE]")
        try:
            report = json.loads(Path(path_text).read_text())
        except (OSError, ValueError) as e:
            ap.error(f"{path_text}: not a readable match report ({e})")
        me = engine or report.get("point_of_view")
        if report.get("kind") != "match" or me not in (report.get("per_engine") or {}):
            ap.error(f"{path_text}: not an arena match report with the engine {me!r}")
        rows.append(match_row(int(step_text), args.opponent, report, None, me=me))
        tcs.add(report.get("time_control"))
        counts.add(rows[-1]["games"])
    doc = strength_doc(
        rows, args.log, args.train_games, tc=" / ".join(sorted(str(t) for t in tcs)),
        games_per_match=counts.pop() if len(counts) == 1 else " / ".join(str(c) for c in sorted(counts)),
        opponents=[args.opponent],
        what=f"checkpoints of the {model_tag()} run against fixed opponents, arena matches played after the run",
    )  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(save_strength(doc, args.out, args.out.with_suffix(".md"), args.out.with_suffix(".png")), end="")
    return 0


def model_tag() -> str:
    return os.environ.get("MODEL_TAG") or "v3"


def plot_strength(doc: dict[str, Any], out_png: Path) -> None:
    """The score of each checkpoint against each opponent (``strength_vs_steps.json``'s
    document), with its interval, against the step and the games seen."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("no matplotlib: no PNG (the numbers are in the JSON)")
        return
    rows = doc["results"]
    if not any(r["games"] for r in rows):
        say("no match was played (EVAL_OPPONENTS=none?): no strength plot")
        return
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for opp in doc["opponents"]:
        pts = [r for r in rows if r["opponent"] == opp and r["games"]]
        if not pts:
            continue
        xs = [r["step"] for r in pts]
        ys = [r["score"] for r in pts]
        err = [[y - r["score_lower"] for y, r in zip(ys, pts, strict=True)], [r["score_upper"] - y for y, r in zip(ys, pts, strict=True)]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"vs {OPPONENT_TEXT[opp].split(' (')[0]}")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"score ({doc['games_per_match']} games a point, {doc['time_control']}, 95% interval)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    seen = {r["step"]: r["games_seen"] for r in rows if r["games_seen"]}
    if seen:
        top = ax.secondary_xaxis("top")
        top.set_xticks(sorted(seen))
        top.set_xticklabels([f"{seen[s] / 1000:.0f}k" if seen[s] >= 1000 else str(seen[s]) for s in sorted(seen)], fontsize=7)
        top.set_xlabel("games seen")
    ax.set_title(f"bundled model {doc.get('model_tag') or model_tag()}: strength over training", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def passes_note(step: int, epoch: float, total_steps: int, pick_kind: str) -> str:
    """How many passes over the training windows TRAIN_STEPS makes, from the trainer's epoch at
    ``step``; with a warning when it is more than one and FINAL_PICK does not pick a checkpoint
    (v18: validation loss went from 1.725 at 0.96 passes to 1.740 at 1.2, the training loss
    dropping from 1.47 to 1.39 as the windows came round again)."""
    passes = epoch / step * total_steps
    note = f"train: TRAIN_STEPS={total_steps} is {passes:.2f} passes over the training windows"
    if passes > 1.0 and not pick_kind:
        note += (
            "; WARNING: windows seen twice lowered the validation loss no more (v18): "
            "set FINAL_PICK=eval_loss or fewer TRAIN_STEPS"
        )
    return note


def tail_train_log(run_dir: Path, seen: int, total_steps: int = 0, pick_kind: str = "") -> int:
    """Print the trainer's new log.jsonl entries; returns how many lines were seen. The first
    training line of a run (``seen`` 0) also says how many passes ``total_steps`` make."""
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return seen
    lines = log.read_text().splitlines()
    told = seen > 0
    for line in lines[seen:]:
        with contextlib.suppress(ValueError):
            e = json.loads(line)
            if not told and total_steps and e.get("epoch") and e.get("step"):
                say(passes_note(int(e["step"]), float(e["epoch"]), total_steps, pick_kind))
                told = True
            if "legal_rate" in e:
                rules = f", rules loss {e['eval_rules_loss']:.4f}" if "eval_rules_loss" in e else ""
                say(
                    f"train: step {e['step']}: val loss {e.get('eval_loss', 0):.3f}, legal rate {e['legal_rate']:.3f}, "
                    f"exact move {e.get('exact_move_accuracy', 0):.3f}{rules}"
                )
            elif e.get("step", 0) % 100 == 0:
                rules = f", rules loss {e['rules_loss']:.4f}" if "rules_loss" in e else ""
                say(
                    f"train: step {e['step']}: loss {e['loss']:.3f}{rules}, {e.get('tokens_per_s')} tokens/s, "
                    f"epoch {e['epoch']}"
                )
    return len(lines)


def lowest_eval_loss(run_dir: Path, ckpts: dict[int, Path]) -> int | None:
    """The checkpoint step whose logged validation loss is lowest (None if none was logged)."""
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return None
    losses: dict[int, float] = {}
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            if "eval_loss" in row and row.get("step") in ckpts and math.isfinite(row["eval_loss"]):
                losses[int(row["step"])] = float(row["eval_loss"])
    return min(losses, key=lambda k: losses[k]) if losses else None


def best_score(results: list[dict[str, Any]], opponent: str, ckpts: dict[int, Path]) -> int | None:
    """The checkpoint step with the highest match score against ``opponent`` (ties: the later
    step, which trained longer); None when no kept checkpoint finished a match against it."""
    scores = {
        int(r["step"]): float(r["score"])
        for r in results
        if r.get("opponent") == opponent and r.get("step") in ckpts and r.get("score") is not None and r.get("games")
    }
    return max(scores, key=lambda k: (scores[k], k)) if scores else None


def final_pick() -> tuple[str, str | None]:
    """FINAL_PICK, checked: ("", None), ("eval_loss", None) or ("score", OPPONENT)."""
    pick = os.environ.get("FINAL_PICK") or ""
    if pick in ("", "eval_loss"):
        return pick, None
    kind, _, opp = pick.partition(":")
    if kind == "score" and opp in eval_opponents():
        return "score", opp
    sys.exit(f"FINAL_PICK: {pick!r} is not 'eval_loss' or 'score:OPPONENT' with OPPONENT in EVAL_OPPONENTS "
             f"({','.join(eval_opponents())})")


def export_final(run_dir: Path, ckpt: Path, final: Path) -> None:
    """A checkpoint as the engine-loadable final folder, with the run's config and log."""
    from training.modeling import export_checkpoint

    export_checkpoint(run_dir, ckpt, final)
    for name in ("training_config.yaml", "log.jsonl"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, final / name)


def build_command(sources: list[Path], data: Path) -> list[str]:
    """The data-set build of the train phase: configs/dataset/scratch-games.yaml over SOURCES, with
    BUILD_OVERRIDES (key=value words, e.g. ``examples.positions_per_game=1``) after the worker count."""
    cmd = mc("dataset", "build", "--config", "configs/dataset/scratch-games.yaml", "--out", str(data), "--no-progress")
    for s in sources:
        cmd += ["--source", str(s)]
    cmd.append(f"workers={env_int('WORKERS', 16)}")
    return cmd + [a for a in (os.environ.get("BUILD_OVERRIDES") or "").split() if a]


def run_build(cmd: list[str], log: Path) -> None:
    """Run a ``dataset build`` command, its output to LOG, the command line to the phase log."""
    say("build: " + " ".join(cmd[3:]))
    with open(log, "w") as build_log:
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=build_log, stderr=subprocess.STDOUT)


def data_from() -> Path | None:
    """DATA_FROM: the WORK folder of an earlier train call on this warm machine whose data set
    (DATA_FROM/data) this call trains on as it is, with no build: a second arm (other
    TRAIN_OVERRIDES, its own WORK and MODEL_TAG) on the same windows."""
    src = os.environ.get("DATA_FROM")
    if not src:
        return None
    data = Path(src) / "data"
    if not (data / "stats.json").is_file():
        sys.exit(f"DATA_FROM={src}: no data set at {data} (an earlier train call on this warm machine builds it)")
    return data


def build_dedupes() -> bool:
    return "dedupe=true" in (os.environ.get("BUILD_OVERRIDES") or "").split()


def built_parts(work: Path, sources: list[Path]) -> list[Path]:
    """The parts an earlier ``build`` call made on this machine (WORK/parts/part-K, with the
    sources each built in ``sources.json``). A part of a source the current GAMES do not hold
    belongs to another run: it is removed, and so are the parts after it."""
    names = {str(s) for s in sources}
    parts: list[Path] = []
    for k in range(1000):
        part = work / "parts" / f"part-{k}"
        if not (part / "stats.json").is_file() or not (part / "sources.json").is_file():
            break
        if not set(json.loads((part / "sources.json").read_text())) <= names:
            say(f"build: {part} holds games GAMES does not name (another run's): removing it and later parts")
            shutil.rmtree(work / "parts")
            return []
        parts.append(part)
    return parts


def build_part(work: Path, sources: list[Path]) -> list[Path]:
    """Build the sources no earlier part holds into the next part, with ``exclude`` of the
    earlier parts when the build dedupes (so the parts merged equal one build of all); returns
    every part. Lets a call that only carries games build them, and the train call build the rest."""
    parts = built_parts(work, sources)
    done = {s for p in parts for s in json.loads((p / "sources.json").read_text())}
    new = [s for s in sources if str(s) not in done]
    if not new:
        say(f"build: every source is in the {len(parts)} part(s) built already")
        return parts
    part = work / "parts" / f"part-{len(parts)}"
    shutil.rmtree(part, ignore_errors=True)
    part.parent.mkdir(parents=True, exist_ok=True)
    cmd = build_command(new, part)
    if parts and build_dedupes():
        cmd.append("exclude=[" + ", ".join(str(p) for p in parts) + "]")
    run_build(cmd, work / f"build-{part.name}.log")
    (part / "sources.json").write_text(json.dumps([str(s) for s in new]))
    stats = json.loads((part / "stats.json").read_text())
    say(
        f"build: {part.name}: {stats['games']['used']} games used of {stats['games']['read']} read "
        f"(filtered {stats['games']['filtered']}), {stats['speed']['seconds']:.0f} s"
    )
    return [*parts, part]


def phase_build() -> int:
    """Build the games this call carries (GAMES, BUILD_OVERRIDES as for train) into a part that
    a later train call on this warm machine uses: the train call then builds only the rest."""
    work = work_dir()
    build_part(work, game_sources(work))
    put_out(work / "phase.log")
    return 0


def phase_train() -> int:
    budget = float(os.environ.get("BUDGET_S") or 510)
    deadline = T0 + budget
    pack_reserve = 25.0 + (10.0 if os.environ.get("FINAL_INT8_GROUP") else 0.0)  # export (int8) + tar + split + plot
    steps = env_int("TRAIN_STEPS", 1800)
    save_steps = env_int("SAVE_STEPS", 300)
    pick_kind, pick_opp = final_pick()  # checked before any work
    beside = selfplay_beside()
    if beside is not None:
        pack_reserve += 15.0  # stopping the self-play and its tar.gz
    work = work_dir()
    # Only Stockfish opponents and self-play need the 21 MB binary: without them .gpu2 can leave it behind.
    sf = stockfish() if needs_stockfish(eval_opponents()) or beside is not None else ""
    shared = data_from()
    data = shared or work / "data"
    resume = os.environ.get("RESUME") == "1"
    if resume and not (data / "stats.json").is_file():
        sys.exit(f"RESUME=1: no data set at {data} (an earlier train call on this warm machine builds it)")
    if shared is not None:
        say(f"build: none, training on {data} (DATA_FROM)")
    elif not resume:
        sources = game_sources(work)
        shutil.rmtree(data, ignore_errors=True)
        if built_parts(work, sources):  # a build call came first: build the rest, merge
            parts = build_part(work, sources)
            if len(parts) == 1:
                shutil.copytree(parts[0], data, copy_function=os.link)
            else:
                t = time.monotonic()
                subprocess.run(mc("dataset", "merge", *map(str, parts), "--out", str(data)), cwd=ROOT, check=True,
                               stdout=subprocess.DEVNULL)  # fmt: skip
                say(f"build: merged {len(parts)} parts in {time.monotonic() - t:.0f} s")
        else:
            run_build(build_command(sources, data), work / "build.log")
    stats = json.loads((data / "stats.json").read_text())
    train_games = int(stats["games"]["with_examples_by_split"].get("train") or 0)
    say(
        f"build: {stats['games']['used']} games used of {stats['games']['read']} read, {train_games} for training, "
        f"examples {stats['examples']['train']['total']} train / {stats['examples']['validation']['total']} validation, "
        f"{stats['speed']['seconds']:.0f} s"
    )

    grow_args: list[str] = []
    grow_layers = env_int("GROW_LAYERS", 0)
    if grow_layers:
        # Depth up-scaling of the model the repository ships (training/grow.py), trained from there.
        grown = work / f"grown-{grow_layers}"
        shutil.rmtree(grown, ignore_errors=True)
        t = time.monotonic()
        subprocess.run(mc("grow-model", "engine/data/bundled-model", str(grown), "--layers", str(grow_layers),
                          "--dtype", "bfloat16"), cwd=ROOT, check=True)  # fmt: skip
        say(f"grow: engine/data/bundled-model to {grow_layers} layers in {time.monotonic() - t:.0f} s ({grown})")
        grow_args = ["model.init=pretrained", f"model.path={grown}", "model.tokenizer="]

    run_dir = work / "run"
    if not resume:
        shutil.rmtree(run_dir, ignore_errors=True)
    cmd = mc(
        "train", "--config", os.environ.get("TRAIN_CONFIG") or "configs/train/scratch-medium.yaml",
        f"data.path={data}", f"train.output_dir={run_dir}", f"train.max_steps={steps}",
        f"train.save_steps={save_steps}", f"eval.eval_steps={save_steps}", "train.save_total_limit=0",
        *grow_args, *[a for a in (os.environ.get("TRAIN_OVERRIDES") or "").split() if a],
    )  # fmt: skip
    say("train: " + " ".join(cmd[3:]))
    train_log = open(work / "train.log", "w")  # noqa: SIM115 - open while the trainer runs
    trainer = subprocess.Popen(cmd, cwd=ROOT, stdout=train_log, stderr=subprocess.STDOUT)
    selfplay = start_selfplay_beside(beside, work, sf, deadline - pack_reserve)
    ev = Evaluator(run_dir, work, sf, deadline - pack_reserve)
    if resume:
        ev.adopt_earlier()
    ev.start()
    # Stop training so that the last checkpoint still gets one evaluation round and the packing.
    eval_round = 40.0 * len(ev.opponents) + 10
    seen = 0
    stopped_by_watchdog = False
    while trainer.poll() is None:
        time.sleep(5)
        seen = tail_train_log(run_dir, seen, steps, pick_kind)
        guess = max(ev.match_seconds) * len(ev.opponents) + 10 if ev.match_seconds else eval_round
        if time.monotonic() > deadline - pack_reserve - guess and trainer.poll() is None:
            say(f"train: watchdog: stopping training at {elapsed():.0f} s to leave {guess:.0f} s for the last evaluation")
            stopped_by_watchdog = True
            # SIGTERM: the trainer saves a checkpoint at the step in hand and exits
            stop_process(trainer, signal.SIGTERM, 60)
    tail_train_log(run_dir, seen, steps, pick_kind)
    train_log.close()
    say(f"train: exit {trainer.returncode}{' (stopped by the watchdog)' if stopped_by_watchdog else ''}")
    ev.training_done.set()
    if selfplay is not None:
        stop_selfplay_beside(selfplay, deadline - pack_reserve)
        pack_selfplay(work / f"selfplay-{beside}")

    # The final model: the trainer's own output when it finished, else the newest checkpoint.
    tag = model_tag()
    final = work / f"bundled-{tag}"
    shutil.rmtree(final, ignore_errors=True)
    ckpts = ev.checkpoints()
    pick = None
    if pick_kind == "eval_loss":
        pick = lowest_eval_loss(run_dir, ckpts)
        why = "the lowest validation loss (FINAL_PICK=eval_loss)"
    elif pick_kind == "score":
        # the evaluator must finish its matches before the pick
        ev.join(timeout=max(1.0, deadline - pack_reserve - time.monotonic()))
        pick = best_score(ev.results, str(pick_opp), ckpts)
        why = f"the highest score against {pick_opp} (FINAL_PICK=score:{pick_opp})"
        if pick is None:
            say(f"final model: no checkpoint finished a match against {pick_opp}; falling back to the newest")
    if pick is not None:
        export_final(run_dir, ckpts[pick], final)
        say(f"final model: checkpoint step {pick}, {why}")
    elif (run_dir / "model.safetensors").is_file() or (run_dir / "model.int8.safetensors").is_file():
        final.mkdir()
        for p in run_dir.iterdir():
            if p.is_file():
                shutil.copy2(p, final / p.name)
    elif ckpts:
        export_final(run_dir, ckpts[max(ckpts)], final)
        say(f"final model: exported from checkpoint step {max(ckpts)} (training did not finish)")
    else:
        say("no checkpoint: no model")
    ev.join(timeout=max(1.0, deadline - pack_reserve - time.monotonic()))
    if ev.is_alive():
        say("eval: still running at the deadline; reporting what is finished")
    int8_group = os.environ.get("FINAL_INT8_GROUP")
    if int8_group and final.is_dir() and not (final / "model.safetensors").is_file():
        say("final model: already stored quantized (qat.int4_modules): FINAL_INT8_GROUP has nothing to do")
    elif int8_group and final.is_dir():
        # A model over ~20M parameters comes back only as int8: 8 parts of 15 MiB at most.
        from engine.int8store import export_int8

        packed = work / f"bundled-{tag}-int8"
        shutil.rmtree(packed, ignore_errors=True)
        export_int8(final, packed, group=int(int8_group))
        shutil.rmtree(final)
        packed.rename(final)
        say(f"final model: stored as int8, a scale per {int8_group} weights (FINAL_INT8_GROUP)")

    out = out_dir()
    write_strength(
        ev, run_dir, train_games, work / "strength_vs_steps.json", work / "strength_vs_steps.png", work / "eval_table.md"
    )
    if (work / "strength_vs_steps.png").is_file():
        if final.is_dir():
            shutil.copy2(work / "strength_vs_steps.png", final / "strength_vs_steps.png")
        put_out(work / "strength_vs_steps.png")
    if final.is_dir():
        shutil.copy2(work / "strength_vs_steps.json", final / "strength_vs_steps.json")
    put_out(work / "strength_vs_steps.json")
    put_out(work / "eval_table.md")
    say("eval table:\n" + (work / "eval_table.md").read_text())
    if final.is_dir():
        size = sum(p.stat().st_size for p in final.iterdir())
        say(f"final model folder: {size / 1e6:.2f} MB ({', '.join(sorted(p.name for p in final.iterdir()))})")
        tgz = work / f"model-{tag}.tgz"
        with tarfile.open(tgz, "w:gz") as tar:
            tar.add(final, arcname=final.name)
        data_bytes = tgz.read_bytes()
        parts = [data_bytes[i : i + PART_BYTES] for i in range(0, len(data_bytes), PART_BYTES)]
        for i, part in enumerate(parts):
            (out / f"model-{tag}.tgz.part-{i:02d}").write_bytes(part)
        say(f"wrote {tgz.name} in {len(parts)} parts ({len(data_bytes) / 2**20:.1f} MiB): cat {tgz.name}.part-* | tar xz")
    report = work / "report.tgz"
    with tarfile.open(report, "w:gz") as tar:
        for name in ("train.log", "build.log", "matches", "eval_table.md", "strength_vs_steps.json"):
            if (work / name).exists():
                tar.add(work / name, arcname=name)
        for name in ("log.jsonl", "training_config.yaml", "summary.json"):
            if (run_dir / name).is_file():
                tar.add(run_dir / name, arcname=f"run/{name}")
        if (data / "stats.json").is_file():
            tar.add(data / "stats.json", arcname="data-stats.json")
    put_out(report)
    say(f"done at {elapsed():.0f} s; $OUT: {', '.join(sorted(p.name for p in out.iterdir()))}")
    put_out(work / "phase.log")
    files = list(out.iterdir())
    if len(files) > 8:
        say(f"WARNING: {len(files)} files in $OUT; only 8 come back")
    return 0 if final.is_dir() else 1


def main(argv: list[str]) -> int:
    os.chdir(ROOT)
    if len(argv) == 3 and argv[0] == "selfplay":
        return phase_selfplay(int(argv[1]), float(argv[2]))
    if argv == ["train"]:
        return phase_train()
    if argv == ["build"]:
        return phase_build()
    if argv[:1] == ["strength"]:  # strength_vs_steps from matches played after the run
        return strength_from_matches(argv[1:])
    if len(argv) == 3 and argv[0] == "plot":  # redraw a returned strength_vs_steps.json
        plot_strength(json.loads(Path(argv[1]).read_text()), Path(argv[2]))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
