"""Board windows (examples.window_plies / prompt.window_plies): the data builder and the
engine write the same prompt for every position, and a model folder says its window."""

from __future__ import annotations

import types
from pathlib import Path

import chess
import pytest

from engine.config import EngineConfig, PromptConfig
from engine.errors import ConfigError, ModelLoadError
from engine.model import PROMPT_FILE, read_window_plies
from engine.player import Player
from training.config import DatasetConfig, ExamplesConfig, load_dataset_config
from training.examples import ExampleMaker
from training.sources import Game, moves_key, replay_uci

# 23 plies: long enough for three windows of 8 (a capture, castling and checks inside).
GAME_UCI = ["e2e4", "e7e5", "g1f3", "b8c6", "f1b5", "a7a6", "b5c6", "d7c6", "e1g1", "f7f6", "d2d4", "e5d4", "f3d4", "c6c5", "d4e2", "d8d1", "f1d1", "c8d7", "b1c3", "e8c8", "c1f4", "g8e7", "d1d7"]


def game() -> Game:
    sans, _ = replay_uci(GAME_UCI)
    return Game("mem", 0, sans, "1-0", moves_key(chess.STARTING_FEN, GAME_UCI))


def board_after(plies: int) -> chess.Board:
    board = chess.Board()
    for uci in GAME_UCI[:plies]:
        board.push_uci(uci)
    return board


def maker(**examples: object) -> ExampleMaker:
    return ExampleMaker(DatasetConfig(examples=ExamplesConfig(**examples)))  # type: ignore[arg-type]


def test_window_fens_from_uci_moves_equal_those_from_san() -> None:
    from training.examples import positions_fen

    plies = list(range(len(GAME_UCI)))
    by_san = positions_fen(game(), plies)
    with_uci = game()
    with_uci.uci = list(GAME_UCI)
    assert positions_fen(with_uci, plies) == by_san
    assert by_san == {k: board_after(k).fen() for k in plies}
    # SAN kept for the first 10 plies only (san_until): no FEN past them, either way.
    short = Game("mem", 0, game().sans[:10], "1-0", game().key, n_plies=len(GAME_UCI), uci=list(GAME_UCI))
    assert positions_fen(short, plies) == {k: by_san[k] for k in range(10)}


def test_next_move_prompts_start_at_the_window_root() -> None:
    exs = maker(positions_per_game=0, window_plies=8).examples(game())
    assert [e.ply for e in exs] == list(range(len(GAME_UCI)))
    for e in exs:
        root = (e.ply // 8) * 8
        text = e.prompt.text
        if root == 0:
            assert "[FEN" not in text and text.split("\n\n", 1)[1].startswith("1.")
        else:
            fen = board_after(root).fen()
            assert f'[SetUp "1"]\n[FEN "{fen}"]' in text
        # The move text after the tags replays from the root to the example's position.
        board = board_after(root)
        body = text.split("\n\n", 1)[1]
        for word in body.split():
            if not word[0].isdigit():
                board.push_san(word)
        assert board.fen() == board_after(e.ply).fen()
        assert e.completion == " " + board_after(e.ply).san(chess.Move.from_uci(GAME_UCI[e.ply]))


def test_continuations_cover_one_window_each_from_either_colour() -> None:
    exs = maker(positions_per_game=0, window_plies=8, kinds={"continuation": 1.0}).examples(game())
    assert len(exs) == 3  # windows at plies 0, 8, 16; each starts at its first or second ply
    for e in exs:
        root = (e.ply // 8) * 8
        assert e.ply in (root, root + 1)
        end = min(root + 8, len(GAME_UCI))
        # The completion's moves are exactly the window's moves after the prompt.
        want = [board_after(k).san(chess.Move.from_uci(GAME_UCI[k])) for k in range(e.ply, end)]
        assert [w for w in e.completion.split() if not w[0].isdigit() and w != "1-0"] == want
        assert e.eos == (end == len(GAME_UCI)) and e.completion.endswith("1-0") == e.eos
        # The header names the side to move at the prompt's end as the engine's.
        engine_white = e.ply % 2 == 0
        assert ('[White "mistral-chess"]' in e.prompt.text) == engine_white
    # Over many games both colours get windows (a coin per window, seeded by the game).
    colours = set()
    for i in range(20):
        g = game()
        g.key = bytes([i]) * 16
        colours |= {e.ply % 2 for e in maker(positions_per_game=0, window_plies=8, kinds={"continuation": 1.0}).examples(g)}
    assert colours == {0, 1}


@pytest.mark.parametrize("window", [1, 4, 8])
def test_engine_writes_the_builders_prompt_at_every_ply(window: int) -> None:
    exs = maker(positions_per_game=0, window_plies=window).examples(game())
    cfg = EngineConfig()
    cfg.prompt = PromptConfig(window_plies=window, result="1-0")  # the game's result, as the data writes it
    player = Player(cfg, None)
    for e in exs:
        board = board_after(e.ply)
        assert player.prompt_for(board).text == e.prompt.text
    # Without windows the engine writes the whole game, as the default builder does.
    whole = maker(positions_per_game=0).examples(game())
    cfg.prompt = PromptConfig(window_plies=0, result="1-0")
    plain = Player(cfg, None)
    assert [plain.prompt_for(board_after(e.ply)).text for e in whole] == [e.prompt.text for e in whole]


def test_engine_windows_count_from_a_position_fen_root() -> None:
    start = board_after(5)
    cfg = EngineConfig()
    cfg.prompt = PromptConfig(window_plies=4)
    board = chess.Board(start.fen())
    for uci in GAME_UCI[5:12]:  # 7 plies after the FEN: the window restarts after 4
        board.push_uci(uci)
    text = Player(cfg, None).prompt_for(board).text
    assert f'[FEN "{board_after(9).fen()}"]' in text
    body = text.split("\n\n", 1)[1]
    want = [board_after(k).san(chess.Move.from_uci(GAME_UCI[k])) for k in (9, 10, 11)]
    assert [w for w in body.split() if not w[0].isdigit()] == want


def test_model_folder_says_its_window(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert read_window_plies(str(folder)) == 0
    (folder / PROMPT_FILE).write_text("window_plies: 16\n")
    assert read_window_plies(str(folder)) == 16
    # The engine follows the loaded model's window (the scorer carries it) unless told otherwise.
    scorer = types.SimpleNamespace(window_plies=16, tokenizer=None)
    assert Player(EngineConfig(), scorer).window_plies == 16  # prompt.window_plies: -1, the default
    assert Player(EngineConfig(), None).window_plies == 0  # no model: whole games
    engine_cfg = EngineConfig()
    engine_cfg.prompt = PromptConfig(window_plies=0)
    assert Player(engine_cfg, scorer).window_plies == 0  # the user's setting wins
    (folder / PROMPT_FILE).write_text("window_plies: -3\n")
    with pytest.raises(ModelLoadError, match="window_plies must be an integer >= 0, not -3"):
        read_window_plies(str(folder))


def test_bad_window_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="window_plies must be >= 0"):
        load_dataset_config(None, ["sources=[{path: x}]", "examples.window_plies=-1"])
    with pytest.raises(ConfigError, match="prompt.window_plies must be -1"):
        PromptConfig(window_plies=-2)


def test_trainer_writes_the_window_into_the_model_folder(tmp_path: Path) -> None:
    from training.config import load_train_config
    from training.modeling import write_engine_prompt

    data = tmp_path / "data"
    data.mkdir()
    repo = Path(__file__).resolve().parents[2]
    cfg = load_train_config(repo / "configs/train/scratch-small.yaml", [f"data.path={data}"])
    out = tmp_path / "model"
    out.mkdir()
    write_engine_prompt(cfg, out)  # no dataset_config.yaml: nothing to say
    assert not (out / PROMPT_FILE).exists()
    (data / "dataset_config.yaml").write_text("examples:\n  window_plies: 0\n")
    write_engine_prompt(cfg, out)
    assert not (out / PROMPT_FILE).exists()  # whole games: the engine's default already
    (data / "dataset_config.yaml").write_text("examples:\n  window_plies: 16\n")
    write_engine_prompt(cfg, out)
    assert read_window_plies(str(out)) == 16


def test_window_start_with_an_offset() -> None:
    from engine.errors import PromptError
    from engine.prompt import window_start

    assert [window_start(k, 8) for k in (0, 7, 8, 15, 16)] == [0, 0, 8, 8, 16]
    assert [window_start(k, 8, 3) for k in (0, 2, 3, 10, 11, 18, 19)] == [0, 0, 3, 3, 11, 11, 19]
    assert window_start(40, 0, 0) == 0  # no windows: the whole game
    with pytest.raises(PromptError, match="window offset must be in 0..7"):
        window_start(5, 8, 8)
    from engine.prompt import window_end

    assert [window_end(k, 8) for k in (0, 7, 8, 15)] == [8, 8, 16, 16]
    assert [window_end(k, 8, 3) for k in (0, 2, 3, 10, 11)] == [3, 3, 11, 11, 19]
    with pytest.raises(PromptError, match="window offset must be in 0..7"):
        window_end(1, 8, 9)


def offset_game(i: int) -> Game:
    g = game()
    g.key = bytes([i, 7]) * 8
    return g


def test_windows_at_offsets_drawn_for_each_game_match_the_engines_prompts() -> None:
    m = maker(positions_per_game=0, window_plies=8, window_offset=-1)
    offsets = {}
    for i in range(40):
        g = offset_game(i)
        off = m.window_offset(g.key)
        offsets[i] = off
        assert off == maker(positions_per_game=0, window_plies=8, window_offset=-1).window_offset(g.key)  # seeded
        exs = m.examples(g)
        assert [e.ply for e in exs] == list(range(len(GAME_UCI)))
        cfg = EngineConfig()
        cfg.prompt = PromptConfig(window_plies=8, window_offset=off, result="1-0")
        player = Player(cfg, None)
        for e in exs:
            assert player.prompt_for(board_after(e.ply)).text == e.prompt.text
            root = 0 if e.ply < off else off + (e.ply - off) // 8 * 8
            assert (f'[FEN "{board_after(root).fen()}"]' in e.prompt.text) == (root > 0)
    assert set(offsets.values()) == set(range(8))  # every offset occurs over 40 games
    # Another build seed draws other offsets; offset 0 (the default) is the engine's windows.
    other = maker(positions_per_game=0, window_plies=8, window_offset=-1, seed=5)
    assert [other.window_offset(offset_game(i).key) for i in range(40)] != list(offsets.values())
    assert {maker(window_plies=8).window_offset(offset_game(i).key) for i in range(40)} == {0}


def test_continuations_end_with_their_offset_window() -> None:
    m = maker(positions_per_game=0, window_plies=8, window_offset=-1, kinds={"continuation": 1.0})
    seen = set()
    for i in range(40):
        g = offset_game(i)
        off = m.window_offset(g.key)
        if off in seen or off == 0:
            continue
        seen.add(off)
        exs = m.examples(g)
        roots = sorted({0, *range(off, len(GAME_UCI), 8)})
        assert len(exs) == len(roots)  # one continuation a window
        for e, root in zip(exs, roots, strict=True):
            assert e.ply in (root, root + 1)
            nxt = [r for r in roots if r > root]
            end = min(nxt[0] if nxt else len(GAME_UCI), len(GAME_UCI))
            want = [board_after(k).san(chess.Move.from_uci(GAME_UCI[k])) for k in range(e.ply, end)]
            assert [w for w in e.completion.split() if not w[0].isdigit() and w != "1-0"] == want
    assert len(seen) >= 5


def test_bad_window_offsets_are_refused() -> None:
    with pytest.raises(ConfigError, match="window_offset must be 0 .* or -1"):
        load_dataset_config(None, ["sources=[{path: x}]", "examples.window_plies=16", "examples.window_offset=3"])
    with pytest.raises(ConfigError, match="window_offset -1 needs board windows"):
        load_dataset_config(None, ["sources=[{path: x}]", "examples.window_offset=-1"])
    with pytest.raises(ConfigError, match="prompt.window_offset must be >= 0"):
        PromptConfig(window_offset=-1)
    cfg = EngineConfig()
    cfg.prompt = PromptConfig(window_plies=8, window_offset=8)
    with pytest.raises(ConfigError, match="prompt.window_offset 8 needs board windows longer than it"):
        Player(cfg, None)
    cfg.prompt = PromptConfig(window_plies=0, window_offset=2)
    with pytest.raises(ConfigError, match="window_plies is 0"):
        Player(cfg, None)
    # The model's window (prompt.window_plies: -1) is checked once a model is there: the UCI
    # engine makes its first Player before the model has loaded.
    cfg.prompt = PromptConfig(window_offset=8)
    assert Player(cfg, None).window_offset == 8
    assert Player(cfg, types.SimpleNamespace(window_plies=16, tokenizer=None)).window_offset == 8
    with pytest.raises(ConfigError, match="prompt.window_plies is 4"):
        Player(cfg, types.SimpleNamespace(window_plies=4, tokenizer=None))
