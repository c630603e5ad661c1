"""Pieces of scripts/bundled_gpu.py (the GPU-machine driver of the bundled model) that run
without a GPU: which checkpoint ships with ``FINAL_PICK=eval_loss`` or ``score:OPPONENT``, and the
opponents list."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def driver() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bundled_gpu", ROOT / "scripts" / "bundled_gpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_log(run: Path, rows: list[dict]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")


def test_final_pick_is_the_checkpoint_of_lowest_validation_loss(driver: ModuleType, tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_log(run, [
        {"step": 100, "loss": 2.0},  # a training line, no eval_loss
        {"step": 500, "eval_loss": 2.32},
        {"step": 1000, "eval_loss": 2.10},
        {"step": 1500, "eval_loss": 2.05},  # lowest, but no checkpoint of it was kept
        {"step": 2000, "eval_loss": float("nan")},
        {"step": 2500, "eval_loss": 2.11},
    ])  # fmt: skip
    ckpts = {s: run / "checkpoints" / f"step-{s:07d}" for s in (500, 1000, 2000, 2500)}
    assert driver.lowest_eval_loss(run, ckpts) == 1000
    assert driver.lowest_eval_loss(run, {2000: ckpts[2000]}) is None  # only a NaN loss: nothing to pick
    assert driver.lowest_eval_loss(tmp_path / "no-run", ckpts) is None


def test_eval_opponents_are_checked(driver: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVAL_OPPONENTS", "random")
    assert driver.eval_opponents() == ["random"]
    assert not driver.needs_stockfish(["random"])
    monkeypatch.setenv("EVAL_OPPONENTS", "random,sf1350")
    assert driver.needs_stockfish(driver.eval_opponents())
    monkeypatch.setenv("EVAL_OPPONENTS", "random,stockfish-9000")
    with pytest.raises(SystemExit, match="stockfish-9000"):
        driver.eval_opponents()


def test_no_matches_with_eval_opponents_none(driver: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EVAL_OPPONENTS=none leaves the CPU cores to the trainer: no export, no match, no plot."""
    monkeypatch.setenv("EVAL_OPPONENTS", "none")
    assert driver.eval_opponents() == []
    assert not driver.needs_stockfish(driver.eval_opponents())
    monkeypatch.setenv("FINAL_PICK", "score:bundled")  # a pick by score needs matches
    with pytest.raises(SystemExit, match="FINAL_PICK"):
        driver.final_pick()
    ckpt = tmp_path / "work" / "run" / "checkpoints" / "step-0000400"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    import training.modeling

    exported: list[Path] = []
    monkeypatch.setattr(training.modeling, "export_checkpoint", lambda run, ckpt, out: exported.append(ckpt))
    ev = driver.Evaluator(tmp_path / "work" / "run", tmp_path / "work", "", time.monotonic() + 60)
    ev.training_done.set()
    ev.run()
    assert ev.done_steps == {400} and ev.results == [] and exported == []
    doc = {"model_tag": "v9", "time_control": "3+0.05", "games_per_match": 40, "opponents": {}, "results": []}
    driver.plot_strength(doc, tmp_path / "s.png")
    assert not (tmp_path / "s.png").exists()


def test_final_pick_by_score_against_an_opponent(driver: ModuleType, tmp_path: Path) -> None:
    ckpts = {s: tmp_path / f"step-{s:07d}" for s in (250, 500, 750, 1000)}
    results = [
        {"step": 250, "opponent": "bundled", "games": 40, "score": 0.45},
        {"step": 500, "opponent": "bundled", "games": 40, "score": 0.6},
        {"step": 500, "opponent": "random", "games": 40, "score": 0.95},
        {"step": 750, "opponent": "bundled", "games": 40, "score": 0.6},  # tie: the later step wins
        {"step": 1000, "opponent": "random", "games": 40, "score": 1.0},  # not a match against bundled
        {"step": 1250, "opponent": "bundled", "games": 40, "score": 0.9},  # no checkpoint kept
        {"step": 1000, "opponent": "bundled", "games": 0, "score": None},  # a match that never ran
    ]
    assert driver.best_score(results, "bundled", ckpts) == 750
    assert driver.best_score(results, "random", ckpts) == 1000
    assert driver.best_score(results, "sf1350", ckpts) is None


def test_final_pick_setting_is_checked(driver: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVAL_OPPONENTS", "bundled,random")
    for value, want in (("", ("", None)), ("eval_loss", ("eval_loss", None)), ("score:bundled", ("score", "bundled"))):
        monkeypatch.setenv("FINAL_PICK", value)
        assert driver.final_pick() == want
    for bad in ("score:sf1350", "score", "best", "score:"):  # sf1350 is not among the opponents played
        monkeypatch.setenv("FINAL_PICK", bad)
        with pytest.raises(SystemExit, match="FINAL_PICK"):
            driver.final_pick()
    assert not driver.needs_stockfish(driver.eval_opponents())  # the bundled model needs no Stockfish


def test_strength_plot_is_redrawn_from_its_json(driver: ModuleType, tmp_path: Path) -> None:
    doc = {
        "model_tag": "v9", "time_control": "3+0.05", "games_per_match": 40,
        "opponents": {"bundled": driver.OPPONENT_TEXT["bundled"]},
        "results": [
            {"step": s, "opponent": "bundled", "games": 40, "score": sc, "score_lower": sc - 0.1,
             "score_upper": sc + 0.1, "games_seen": 1000 * s}
            for s, sc in ((250, 0.5), (500, 0.6))
        ],
    }  # fmt: skip
    (tmp_path / "s.json").write_text(json.dumps(doc))
    assert driver.main(["plot", str(tmp_path / "s.json"), str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_strength_from_matches_played_after_the_run(driver: ModuleType, tmp_path: Path) -> None:
    """An EVAL_OPPONENTS=none run rated afterwards: arena match reports become strength_vs_steps."""

    def report(path: Path, w: int, d: int, losses: int, me: str = "new") -> Path:
        path.write_text(json.dumps({
            "kind": "match", "point_of_view": me, "time_control": "3+0.05", "complete": True,
            "wins": w, "draws": d, "losses": losses, "score": (w + d / 2) / (w + d + losses),
            "elo": {"diff": 10.0, "lower": -5.0, "upper": 25.0},
            "per_engine": {me: {"illegal_moves": 0, "time_losses": 1, "fallbacks": 0}, "old": {}},
        }))  # fmt: skip
        return path

    write_log(tmp_path / "run", [
        {"step": 100, "loss": 2.0, "epoch": 0.25}, {"step": 200, "loss": 1.9, "epoch": 0.5},
        {"step": 200, "eval_loss": 1.8, "legal_rate": 0.96, "exact_move_accuracy": 0.25},
    ])  # fmt: skip
    a = report(tmp_path / "a.json", 80, 80, 40)
    b = report(tmp_path / "b.json", 50, 30, 20, me="step-200")
    out = tmp_path / "strength.json"
    argv = ["strength", "--log", str(tmp_path / "run" / "log.jsonl"), "--train-games", "1000", "--out", str(out)]
    assert driver.main([*argv, f"200={b}:step-200", f"100={a}"]) == 0
    doc = json.loads(out.read_text())
    first, second = doc["results"]
    assert (first["step"], first["games"], first["score"], first["games_seen"]) == (100, 200, 0.6, 250)
    assert first["time_losses"] == 1 and first["eval_loss"] is None
    assert (second["step"], second["games_seen"], second["eval_loss"], second["legal_rate"]) == (200, 500, 1.8, 0.96)
    assert first["score_lower"] < 0.6 < first["score_upper"]
    assert doc["games_per_match"] == "100 / 200" and doc["opponents"] == {"bundled": driver.OPPONENT_TEXT["bundled"]}
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 200 | 500 | bundled | 100 | 50 | 30 | 20 |" in out.with_suffix(".md").read_text()
    # a report without that engine, or a spec without a step, is an error that names it
    with pytest.raises(SystemExit):
        driver.main([*argv, f"100={a}:nobody"])
    with pytest.raises(SystemExit):
        driver.main([*argv, str(a)])
    with pytest.raises(SystemExit):  # a log that is not there
        driver.main(["strength", "--log", str(tmp_path / "nolog.jsonl"), "--train-games", "1", "--out", str(out), f"100={a}"])


def test_packed_sets_go_to_the_build_as_they_are(
    driver: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, selfplay_dir: Path
) -> None:
    # No unpacking: the build's workers decode .mcg files (tests/training/test_packgames.py).
    from training.packgames import pack_games

    repo = tmp_path / "repo"
    packed = repo / ".gpu2" / "datasets" / "selfplay-x.mcg"
    pack_games([selfplay_dir], packed)
    monkeypatch.setattr(driver, "ROOT", repo)
    monkeypatch.setenv("GAMES", ".gpu2/datasets/*")
    monkeypatch.setenv("WORK", str(tmp_path / "work"))
    monkeypatch.setenv("WORKERS", "1")
    sources = driver.game_sources(tmp_path / "work")
    assert sources == [packed]
    assert not (tmp_path / "work" / "games" / "selfplay-x").exists()
    cmd = driver.build_command(sources, tmp_path / "data")
    assert cmd[cmd.index("--source") + 1] == str(packed)


def test_games_may_be_absolute_globs_of_unpacked_folders(
    driver: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, selfplay_dir: Path
) -> None:
    # Sets unpacked by an earlier call outside the repository: taken as they are, not copied.
    monkeypatch.setattr(driver, "ROOT", tmp_path / "repo")
    monkeypatch.setenv("GAMES", f"{selfplay_dir.parent}/{selfplay_dir.name[:-1]}? {tmp_path}/missing-*")
    sources = driver.game_sources(tmp_path / "work")
    assert sources == sorted({p.parent for p in selfplay_dir.rglob("games-*.parquet")})
    monkeypatch.setenv("GAMES", f"{tmp_path}/missing-*")
    with pytest.raises(SystemExit, match="no games in"):
        driver.game_sources(tmp_path / "work")


def test_build_overrides_reach_the_data_set_build(
    driver: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, selfplay_dir: Path
) -> None:
    import subprocess

    monkeypatch.setenv("WORKERS", "1")
    monkeypatch.delenv("BUILD_OVERRIDES", raising=False)
    stats = {}
    for name, overrides in (("both", ""), ("one", "examples.positions_per_game=1")):
        monkeypatch.setenv("BUILD_OVERRIDES", overrides)
        cmd = driver.build_command([selfplay_dir], tmp_path / name)
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        stats[name] = json.loads((tmp_path / name / "stats.json").read_text())
    games = stats["both"]["games"]["with_examples_by_split"]["train"]
    assert games == stats["one"]["games"]["with_examples_by_split"]["train"] > 0
    assert stats["both"]["examples"]["train"]["total"] == 2 * games
    assert stats["one"]["examples"]["train"]["total"] == games

    monkeypatch.setenv("BUILD_OVERRIDES", "examples.positions_per_gme=1")  # a misspelt key is refused by name
    bad = subprocess.run(driver.build_command([selfplay_dir], tmp_path / "bad"), cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "positions_per_gme" in bad.stderr


def test_resume_keeps_the_matches_of_the_earlier_call(
    driver: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVAL_OPPONENTS", "bundled")
    matches = tmp_path / "work" / "matches"
    matches.mkdir(parents=True)
    report = {"wins": 20, "draws": 4, "losses": 16, "score": 0.55, "elo": {"diff": 35}, "complete": True,
              "per_engine": {"step-500": {"illegal_moves": 0, "time_losses": 0, "fallbacks": 0}}}  # fmt: skip
    (matches / "step-0000500-bundled.json").write_text(json.dumps(report))
    (matches / "step-0000500-random.json").write_text(json.dumps(report))  # not an opponent of this run
    ev = driver.Evaluator(tmp_path / "work" / "run", tmp_path / "work", "", 0.0)
    ev.adopt_earlier()
    assert ev.done_steps == {500}
    assert [(r["step"], r["opponent"], r["games"], r["score"]) for r in ev.results] == [(500, "bundled", 40, 0.55)]


def test_resume_needs_the_earlier_data_set(driver: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESUME", "1")
    monkeypatch.setenv("WORK", str(tmp_path / "work"))
    monkeypatch.setenv("EVAL_OPPONENTS", "bundled")
    with pytest.raises(SystemExit, match="RESUME=1: no data set"):
        driver.phase_train()


def test_a_second_arm_trains_on_the_data_set_of_an_earlier_call(
    driver: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DATA_FROM=EARLIER_WORK: the data set an earlier train call built, used as it is; refused
    by name when that call left none."""
    monkeypatch.delenv("DATA_FROM", raising=False)
    assert driver.data_from() is None
    earlier = tmp_path / "bw"
    monkeypatch.setenv("DATA_FROM", str(earlier))
    monkeypatch.setenv("WORK", str(tmp_path / "bw2"))
    monkeypatch.setenv("EVAL_OPPONENTS", "none")
    with pytest.raises(SystemExit, match=f"DATA_FROM={earlier}: no data set at {earlier / 'data'}"):
        driver.phase_train()
    (earlier / "data").mkdir(parents=True)
    (earlier / "data" / "stats.json").write_text("{}")
    assert driver.data_from() == earlier / "data"


def test_passes_over_the_windows_are_told_and_a_second_pass_warned(
    driver: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORK", str(tmp_path / "work"))  # say() also writes phase.log there
    # v18's numbers: epoch 0.02 at step 100, 6,000 steps
    note = driver.passes_note(100, 0.02, 6000, "")
    assert "1.20 passes" in note and "WARNING" in note and "FINAL_PICK=eval_loss" in note
    assert "WARNING" not in driver.passes_note(100, 0.02, 6000, "eval_loss")
    assert driver.passes_note(100, 0.02, 3600, "").endswith("0.72 passes over the training windows")

    run = tmp_path / "run"
    write_log(run, [
        {"step": 100, "loss": 1.5, "epoch": 0.02, "tokens_per_s": 6.8e5},
        {"step": 200, "loss": 1.5, "epoch": 0.04, "tokens_per_s": 6.8e5},
        {"step": 400, "eval_loss": 1.77, "legal_rate": 0.95, "exact_move_accuracy": 0.25},
    ])  # fmt: skip
    seen = driver.tail_train_log(run, 0, 6000, "")
    out = capsys.readouterr().out
    assert seen == 4
    assert out.count("passes over the training windows") == 1 and "1.20 passes" in out
    assert "step 400: val loss 1.770" in out
    # later polls of the same run say it no more
    (run / "log.jsonl").open("a").write(json.dumps({"step": 500, "loss": 1.4, "epoch": 0.1}) + "\n")
    driver.tail_train_log(run, seen, 6000, "")
    assert "passes" not in capsys.readouterr().out
    # a run with the rules loss says it beside the losses
    write_log(run, [
        {"step": 100, "loss": 1.5, "rules_loss": 0.1725, "epoch": 0.02, "tokens_per_s": 6.8e5},
        {"step": 400, "eval_loss": 1.77, "eval_rules_loss": 0.16, "legal_rate": 0.95, "exact_move_accuracy": 0.25},
    ])  # fmt: skip
    driver.tail_train_log(run, 0, 6000, "eval_loss")
    out = capsys.readouterr().out
    assert "step 100: loss 1.500, rules loss 0.1725," in out and "exact move 0.250, rules loss 0.1600" in out


def test_stockfish_in_parts_is_joined_in_order_once_all_have_come(driver: ModuleType, tmp_path: Path) -> None:
    # gpu_carry.sh --stockfish --split spreads stockfish.xz over .gpuK folders (one call each)
    blob = bytes(range(256)) * 40
    pieces = [blob[:4000], blob[4000:8000], blob[8000:]]
    for folder, i in ((".gpu3", 0), (".gpu2", 2)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"stockfish.xz.part-{i:02d}-of-03").write_bytes(pieces[i])
    with pytest.raises(SystemExit, match=r"Stockfish parts \[1\] are not here"):
        driver.stockfish_parts(tmp_path)
    (tmp_path / ".gpu4").mkdir()
    (tmp_path / ".gpu4" / "stockfish.xz.part-01-of-03").write_bytes(pieces[1])
    parts = driver.stockfish_parts(tmp_path)
    assert [p.name for p in parts] == [f"stockfish.xz.part-{i:02d}-of-03" for i in range(3)]
    assert b"".join(p.read_bytes() for p in parts) == blob
    # a whole stockfish.xz in .gpu2 is taken as it is
    (tmp_path / ".gpu2" / "stockfish.xz").write_bytes(b"whole")
    assert driver.stockfish_parts(tmp_path) == [tmp_path / ".gpu2" / "stockfish.xz"]


def test_stockfish_parts_of_two_splits_or_none_are_refused(driver: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no Stockfish"):
        driver.stockfish_parts(tmp_path)
    (tmp_path / ".gpu2").mkdir()
    (tmp_path / ".gpu2" / "stockfish.xz.part-00-of-02").write_bytes(b"a")
    (tmp_path / ".gpu2" / "stockfish.xz.part-01-of-03").write_bytes(b"b")
    with pytest.raises(SystemExit, match="different splits"):
        driver.stockfish_parts(tmp_path)


def test_selfplay_beside_training_is_checked(driver: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SELFPLAY_BESIDE", raising=False)
    monkeypatch.delenv("NODES", raising=False)
    assert driver.selfplay_beside() is None
    monkeypatch.setenv("SELFPLAY_BESIDE", "16O")
    with pytest.raises(SystemExit, match="'16O' is not a seed"):
        driver.selfplay_beside()
    monkeypatch.setenv("SELFPLAY_BESIDE", "160")
    monkeypatch.setenv("EVAL_OPPONENTS", "random")
    with pytest.raises(SystemExit, match="needs EVAL_OPPONENTS=none"):
        driver.selfplay_beside()
    monkeypatch.setenv("EVAL_OPPONENTS", "none")
    assert driver.selfplay_beside() == 160
    cmd = driver.selfplay_command(160, Path("/w/selfplay-160"), 12, 431.6, "/tmp/sf")
    for word in ("seed=160", "nodes=600", "jitter_per_move=true", "chunk_games=100", "max_seconds=432", "stockfish=/tmp/sf"):
        assert word in cmd
    assert cmd[cmd.index("--out") + 1] == "/w/selfplay-160"
    assert cmd[cmd.index("--workers") + 1] == "12"
    assert not any(w.startswith("mistake_rate=") for w in cmd)


def test_selfplay_overrides_go_after_the_recipe(driver: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELFPLAY_OVERRIDES", "mistake_rate=0.03 nodes=800")
    cmd = driver.selfplay_command(370, Path("/w/selfplay-370"), 15, 480, "/tmp/sf")
    assert cmd[-2:] == ["mistake_rate=0.03", "nodes=800"]
    assert cmd.index("nodes=600") < cmd.index("nodes=800")  # the later word wins in the config loader
    monkeypatch.setenv("SELFPLAY_OVERRIDES", "mistake_rate=0.03 0.05")
    with pytest.raises(SystemExit, match="SELFPLAY_OVERRIDES: 0.05 is not key=value"):
        driver.selfplay_command(370, Path("/w/selfplay-370"), 15, 480, "/tmp/sf")


def test_a_build_call_builds_the_carried_games_and_the_train_call_the_rest(
    driver: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, selfplay_dir: Path
) -> None:
    """``build`` makes part 0 of the games it carries; the next build makes part 1 of the sources
    no part holds, excluding part 0's games (dedupe=true); parts of another run's sources go."""
    from training.packgames import pack_games

    chunks = sorted(selfplay_dir.glob("*.parquet"))
    assert len(chunks) == 3
    repo = tmp_path / "repo"
    first = repo / ".gpu2" / "datasets" / "a.mcg"
    second = repo / ".gpu3" / "datasets" / "b.mcg"
    pack_games(chunks[:2], first)
    pack_games(chunks[1:], second)  # the middle chunk's 8 games are in both
    (repo / "configs" / "dataset").mkdir(parents=True)  # the build reads its config from the repository
    (repo / "configs" / "dataset" / "scratch-games.yaml").write_text((ROOT / "configs/dataset/scratch-games.yaml").read_text())
    work = tmp_path / "work"
    monkeypatch.setattr(driver, "ROOT", repo)
    for key, value in (("WORK", str(work)), ("OUT", str(tmp_path / "out")), ("WORKERS", "1"),
                       ("BUILD_OVERRIDES", "tokenizer= dedupe=true"), ("GAMES", ".gpu2/datasets/*")):  # fmt: skip
        monkeypatch.setenv(key, value)
    (tmp_path / "out").mkdir()
    assert driver.phase_build() == 0
    part0 = work / "parts" / "part-0"
    assert json.loads((part0 / "sources.json").read_text()) == [str(first)]
    assert json.loads((part0 / "stats.json").read_text())["games"]["used"] == 16

    monkeypatch.setenv("GAMES", ".gpu*/datasets/*")
    parts = driver.build_part(work, driver.game_sources(work))
    assert parts == [part0, work / "parts" / "part-1"]
    stats1 = json.loads((parts[1] / "stats.json").read_text())
    assert stats1["games"]["filtered"] == {"excluded": 8} and stats1["games"]["used"] == 8
    assert driver.build_part(work, driver.game_sources(work)) == parts  # nothing left to build

    # Parts built from sources the current GAMES do not name belong to another run.
    monkeypatch.setenv("GAMES", ".gpu3/datasets/*")
    assert driver.built_parts(work, driver.game_sources(work)) == []
    assert not (work / "parts").exists()
