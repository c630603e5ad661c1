"""scripts/gpu_stand_in.sh: an arm stands in for the bundled model in the working tree for a
GPU call, commits are refused meanwhile, and --restore gives back exactly HEAD's files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = "engine/data/bundled-model"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def run(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "scripts/gpu_stand_in.sh", *args], cwd=repo, capture_output=True, text=True)


def model_folder(path: Path, weights: bytes, storage: str = "model.int8.safetensors") -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "mistral"}\n')
    (path / "tokenizer.json").write_text("{}\n")
    (path / storage).write_bytes(weights)
    return path


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """A small checkout: the script, a bundled model, one result PGN and an arm kept in the history."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "gpu_stand_in.sh", repo / "scripts")
    shutil.copy2(ROOT / "scripts" / "tree_size.sh", repo / "scripts")
    model_folder(repo / MODEL, b"bundled weights")
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "benchmarks" / "results" / "match.pgn.gz").write_bytes(b"pgn")
    (repo / "benchmarks" / "results" / "match.json").write_text("{}\n")
    (repo / ".gitignore").write_text("/.gpu*/\n")
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    model_folder(repo / "engine" / "data" / "arms" / "v9", b"arm from the history")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "start")
    return repo


def test_a_folder_stands_in_and_restore_gives_head_back(repo: Path, tmp_path: Path) -> None:
    arm = model_folder(tmp_path / "arm", b"arm weights", storage="model.safetensors")
    (arm / "engine_prompt.yaml").write_text("window_plies: 16\n")
    shutil.rmtree(repo / ".git" / "hooks", ignore_errors=True)  # a clone may have no hooks folder
    done = run(repo, str(arm), "--drop-results")
    assert done.returncode == 0, done.stderr
    bundled = repo / MODEL
    # the arm's files, and not the bundled model's weights of the other storage
    assert (bundled / "model.safetensors").read_bytes() == b"arm weights"
    assert not (bundled / "model.int8.safetensors").exists()
    assert (bundled / "engine_prompt.yaml").is_file()
    assert not (repo / "benchmarks/results/match.pgn.gz").exists()
    assert (repo / "benchmarks/results/match.json").exists()
    assert (repo / ".gpu2/STAND_IN").read_text().strip() == str(arm)
    assert "stands in for" in done.stdout
    # nothing can be committed meanwhile, and a second stand-in is refused
    (repo / "notes.txt").write_text("x\n")
    git(repo, "add", "notes.txt")
    commit = subprocess.run(["git", "commit", "-qm", "oops"], cwd=repo, capture_output=True, text=True)
    assert commit.returncode != 0 and "stands in for engine/data/bundled-model" in commit.stderr
    again = run(repo, str(arm))
    assert again.returncode == 1 and "already in place" in again.stderr

    back = run(repo, "--restore")
    assert back.returncode == 0, back.stderr
    assert (bundled / "model.int8.safetensors").read_bytes() == b"bundled weights"
    assert not (bundled / "model.safetensors").exists() and not (bundled / "engine_prompt.yaml").exists()
    assert (repo / "benchmarks/results/match.pgn.gz").read_bytes() == b"pgn"
    assert not (repo / ".gpu2/STAND_IN").exists()
    git(repo, "commit", "-qm", "notes")  # commits work again
    assert git(repo, "status", "--porcelain") == ""


def test_a_folder_of_the_history_stands_in(repo: Path) -> None:
    git(repo, "rm", "-rq", "engine/data/arms")
    git(repo, "commit", "-qm", "arm leaves the tree")
    first = git(repo, "rev-list", "--max-parents=0", "HEAD").strip()
    done = run(repo, f"{first}:engine/data/arms/v9")
    assert done.returncode == 0, done.stderr
    assert (repo / MODEL / "model.int8.safetensors").read_bytes() == b"arm from the history"
    assert (repo / "benchmarks/results/match.pgn.gz").exists()  # kept without --drop-results
    assert run(repo, "--restore").returncode == 0
    assert git(repo, "status", "--porcelain") == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere"], "nowhere: not a folder"),
        (["HEAD:engine/data/arms/none"], "no such folder in that commit"),
        (["deadbeef:engine/data/arms/v9"], "not a commit of this repository"),
        (["benchmarks"], "no config.json, not a model folder"),
        (["engine/data/arms/v9", "--keep"], "unknown option --keep"),
        (["--restore", "x"], "--restore takes nothing else"),
        ([], "usage:"),
    ],
)
def test_bad_arguments_are_refused_and_change_nothing(repo: Path, args: list[str], message: str) -> None:
    done = run(repo, *args)
    assert done.returncode != 0 and message in done.stderr
    assert git(repo, "status", "--porcelain") == "" and not (repo / ".gpu2/STAND_IN").exists()


def test_a_pre_commit_hook_of_the_user_is_not_replaced(repo: Path) -> None:
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text("#!/bin/sh\nexit 0\n")
    done = run(repo, "engine/data/arms/v9")
    assert done.returncode == 1 and "pre-commit hook of yours" in done.stderr
    assert hook.read_text() == "#!/bin/sh\nexit 0\n" and git(repo, "status", "--porcelain") == ""


def test_a_changed_bundled_model_is_not_overwritten(repo: Path) -> None:
    (repo / MODEL / "config.json").write_text('{"edited": true}\n')
    done = run(repo, "engine/data/arms/v9")
    assert done.returncode == 1 and "uncommitted changes" in done.stderr
    assert (repo / MODEL / "config.json").read_text() == '{"edited": true}\n'
