"""The engine's configuration: dataclasses with defaults, loaded from YAML.

``configs/engine.yaml`` documents every key. UCI ``setoption`` and CLI flags change
the same fields (see :data:`engine.uci.OPTIONS`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from engine.configtools import load_config
from engine.errors import ConfigError

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
Quantization = Literal["auto", "none", "nf4"]


@dataclasses.dataclass
class ModelConfig:
    # Local folder or hub name. Empty: the bundled default model (or a clear error
    # when none is installed). A folder holding only a LoRA adapter works too: its
    # adapter_config.json names the base model.
    path: str = ""
    adapter: str = ""  # LoRA adapter folder (peft), optional
    device: Device = "auto"  # auto: cuda when available, else cpu
    dtype: DType = "auto"  # auto: bfloat16 on cuda, float32 on cpu
    quantization: Quantization = "auto"  # auto: nf4 on cuda for models over 1B parameters, else none
    revision: str = ""  # hub revision (branch, tag or commit)
    token_env: str = "HF_TOKEN"  # environment variable holding a hub token, if any
    local_files_only: bool = False
    threads: int = 0  # torch CPU threads; 0 = torch's default
    attn_implementation: str = "sdpa"
    # NF4 on CUDA: steps of up to this many tokens may use the fused NF4 kernel (planned
    # per projection at load: used where it beats dequantize + product); 0 = never
    nf4_kernel_rows: int = 128
    # Unix socket of a running model server (`mistral-chess serve`): the engine then
    # loads no model and asks that server, which serves many engines' games at once;
    # the keys above are the server's own then, except the tokenizer it reports
    server: str = ""

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ConfigError(f"model.threads must be >= 0, not {self.threads}")
        if self.nf4_kernel_rows < 0:
            raise ConfigError(f"model.nf4_kernel_rows must be >= 0 (0 turns the fused NF4 kernel off), "
                              f"not {self.nf4_kernel_rows}")


@dataclasses.dataclass
class PromptConfig:
    template: str = "pgn-base"  # bundled name (pgn-base, pgn-instruct) or a YAML path
    engine_name: str = "mistral-chess"
    opponent_name: str = "?"
    engine_elo: int = 2800  # written to WhiteElo/BlackElo for the engine's side; 0 leaves it empty
    opponent_elo: int = 0
    result: str = "auto"  # auto: the engine's side wins; or 1-0, 0-1, 1/2-1/2, *
    max_prompt_tokens: int = 2048  # older moves are cut (the prompt restarts from a FEN) past this
    # Board windows: N > 0 starts the move text at the last ply that is a multiple of N
    # ([SetUp]/[FEN] of that position, then its moves), as a model trained on such windows
    # (examples.window_plies) reads games; 0: the whole game; -1: as the model folder's
    # engine_prompt.yaml says (0 without one).
    window_plies: int = -1
    # Where the windows start: at plies window_offset, window_offset + N, ... of the game (and
    # ply 0 before the first). 0, the default, is how every bundled model was trained; a model
    # trained on windows at every offset (examples.window_offset: -1) reads any of them.
    window_offset: int = 0

    def __post_init__(self) -> None:
        if self.window_offset < 0:
            raise ConfigError(f"prompt.window_offset must be >= 0, not {self.window_offset}")
        if self.result not in ("auto", "1-0", "0-1", "1/2-1/2", "*"):
            raise ConfigError(f"prompt.result must be auto, 1-0, 0-1, 1/2-1/2 or *, not {self.result!r}")
        if self.window_plies < -1:
            raise ConfigError(f"prompt.window_plies must be -1 (the model's), 0 (whole game) or a ply count, "
                              f"not {self.window_plies}")
        if self.max_prompt_tokens < 64:
            raise ConfigError(f"prompt.max_prompt_tokens must be at least 64, not {self.max_prompt_tokens}")


@dataclasses.dataclass
class SearchConfig:
    mode: Literal["constrained", "generate"] = "constrained"
    temperature: float = 0.0  # 0: best move / greedy; > 0: sample
    seed: int = 0  # fixed seed for sampling and random fallbacks; -1 = fresh each game
    max_new_tokens: int = 8  # generate mode: tokens per try
    retries: int = 3  # generate mode: extra tries after an invalid output
    retry_temperature: float = 0.8  # generate mode: sampling temperature of retries
    fallback: Literal["constrained", "random", "resign"] = "constrained"
    score_batch: int = 64  # constrained, plain scorer only: candidates per forward pass
    cache_slots: int = 4  # fast path: games' KV caches kept; more than the games played at once (bot, arena)
    # Lines reported per move (UCI MultiPV): the constrained choice's N most likely moves, each
    # as `info multipv k ... pv MOVE`, its probability as the score; 1: the chosen move only.
    multipv: int = 1
    # Tactical guard (engine/guard.py), constrained mode: "material" looks at the model's
    # `guard_moves` most likely moves with a capture search and a mate-in-one check and plays
    # the most likely one within `guard_margin_cp` of the best of them (a mate in one is always
    # played), in at most `guard_ms` a move. "none": the model's choice as it is.
    guard: Literal["none", "material"] = "none"
    guard_moves: int = 5
    guard_margin_cp: int = 150
    guard_ms: int = 30
    # Guard: the opponent's first reply in the capture search may also be a quiet check (forks
    # and discoveries that start with check; +23.5 Elo for v24 with the guard, 400 games).
    guard_checks: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.guard_moves <= 256:
            raise ConfigError(f"search.guard_moves must be in 1..256, not {self.guard_moves}")
        if self.guard_margin_cp < 0:
            raise ConfigError(f"search.guard_margin_cp must be >= 0, not {self.guard_margin_cp}")
        if self.guard_ms < 1:
            raise ConfigError(f"search.guard_ms must be >= 1, not {self.guard_ms}")
        if self.temperature < 0 or self.retry_temperature < 0:
            raise ConfigError("search.temperature and search.retry_temperature must be >= 0")
        if self.retries < 0:
            raise ConfigError(f"search.retries must be >= 0, not {self.retries}")
        if not 1 <= self.max_new_tokens <= 64:
            raise ConfigError(f"search.max_new_tokens must be in 1..64, not {self.max_new_tokens}")
        if self.score_batch < 1:
            raise ConfigError(f"search.score_batch must be >= 1, not {self.score_batch}")
        if self.cache_slots < 1:
            raise ConfigError(f"search.cache_slots must be >= 1, not {self.cache_slots}")
        if not 1 <= self.multipv <= 256:
            raise ConfigError(f"search.multipv must be in 1..256, not {self.multipv}")


@dataclasses.dataclass
class ResignConfig:
    # never; streak: after the model resigns (writes its own loss) `streak` moves in a
    # row; threshold: after its play-on probability is below `threshold` `streak`
    # moves in a row.
    mode: Literal["never", "streak", "threshold"] = "never"
    streak: int = 3
    threshold: float = 0.05
    min_ply: int = 20  # never resign before this ply

    def __post_init__(self) -> None:
        if self.streak < 1:
            raise ConfigError(f"resign.streak must be >= 1, not {self.streak}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"resign.threshold must be in [0, 1], not {self.threshold}")


@dataclasses.dataclass
class DrawConfig:
    # Answer to a draw offer: never, always, or threshold: accept when the model's
    # play-on probability (see resign) is below `threshold`, from ply `min_ply` on.
    accept: Literal["never", "always", "threshold"] = "threshold"
    threshold: float = 0.25
    min_ply: int = 40

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"draw.threshold must be in [0, 1], not {self.threshold}")


@dataclasses.dataclass
class TimeConfig:
    move_overhead_ms: int = 100  # kept back from every budget for the GUI and the pipe
    # The model is waited for up to this share of the remaining time (less the overhead);
    # then the engine answers a fallback move (engine/timeman.py says why no smaller slice).
    max_share: float = 0.4
    min_budget_ms: int = 10
    # The instant move when the model has not answered within the budget (or is still
    # loading): "material" (engine/guard.py, instant_move: a mate in one, else the best
    # one-ply exchange, equal moves at random) or "random" (any legal move).
    emergency: Literal["material", "random"] = "material"

    def __post_init__(self) -> None:
        if self.move_overhead_ms < 0:
            raise ConfigError("time.move_overhead_ms must be >= 0")
        if not 0 < self.max_share <= 1:
            raise ConfigError("time.max_share must be in (0, 1]")


@dataclasses.dataclass
class EngineConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    prompt: PromptConfig = dataclasses.field(default_factory=PromptConfig)
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)
    resign: ResignConfig = dataclasses.field(default_factory=ResignConfig)
    draw: DrawConfig = dataclasses.field(default_factory=DrawConfig)
    time: TimeConfig = dataclasses.field(default_factory=TimeConfig)
    log_level: str = "INFO"
    log_file: str = ""  # stderr when empty


def load_engine_config(
    path: str | Path | None = None, overrides: Iterable[str] | Mapping[str, Any] = ()
) -> EngineConfig:
    return load_config(EngineConfig, path, overrides)
