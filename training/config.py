"""Typed configurations of the training package, read from YAML with ``key=value`` overrides.

Three configs, one per command:

- :class:`SelfPlayConfig`  -- ``mistral-chess dataset selfplay`` (Stockfish games, LAION schema)
- :class:`DatasetConfig`   -- ``mistral-chess dataset build`` (games -> prompt/completion examples)
- :class:`TrainConfig`     -- ``mistral-chess train`` (QLoRA / LoRA / full training)

Every key is documented here and in docs/training.md; defaults < YAML < overrides
(:func:`engine.configtools.load_config`). Values that do not make sense are a
:class:`~engine.errors.ConfigError` naming the dotted key, raised before any work.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from engine.config import PromptConfig
from engine.configtools import load_config
from engine.errors import ConfigError

RESULTS = ("1-0", "0-1", "1/2-1/2")
EXAMPLE_KINDS = ("next_move", "continuation")
# Lichess speed categories by estimated duration (base + 40 * increment), in seconds.
TIME_CONTROL_CATEGORIES = ("ultrabullet", "bullet", "blitz", "rapid", "classical", "correspondence")


def cpu_count() -> int:
    """Cores this process may use (respects affinity masks and cgroup-limited sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# -- self-play -------------------------------------------------------------------------


@dataclasses.dataclass
class SelfPlayConfig:
    out: str = "data/selfplay"  # folder of parquet chunks (LAION schema) + manifest.json
    games: int = 1000  # total games in the folder; rerun with a larger number to extend it
    workers: int = 0  # Stockfish processes; 0 = one per CPU core
    chunk_games: int = 250  # games per parquet file (the unit of resume)
    seed: int = 0  # game i's random opening comes from (seed, i): reruns give the same games
    stockfish: str = ""  # path; empty: $STOCKFISH_PATH, `stockfish` on PATH, /usr/games/stockfish
    nodes: int = 1000  # search budget per move (any of nodes/depth/movetime_ms; 0 = unused)
    depth: int = 0
    movetime_ms: int = 0
    elo: int = 0  # UCI_Elo with UCI_LimitStrength (Stockfish 15.1: 1350..2850); 0 = full strength
    hash_mb: int = 16
    # Each game opens with a random number in [min, max] of uniformly random legal moves:
    # fixed-node Stockfish is deterministic, so the opening is all the diversity there is
    # (2 random plies allow only 400 distinct games; 4 allow about 200,000).
    random_plies_min: int = 4
    random_plies_max: int = 8
    # More variety at a fixed node count, both fixed by (seed, game index) so a rerun plays
    # the same games: each game's node budget is drawn uniformly from nodes * (1 +- jitter),
    # and a fraction of games starts from a book line (then no random plies) instead.
    nodes_jitter: float = 0.0
    # Draw the node budget anew for every move (from the game's own stream) instead of once a
    # game. With one budget a game, a book line and a budget fix the whole game: the arena's 59
    # book lines and the 301 budgets of nodes=600 nodes_jitter=0.25 allow only 17,759 distinct
    # book games, and sets that share that recipe repeat them (docs/training.md, "Duplicates").
    jitter_per_move: bool = False
    book_fraction: float = 0.0
    book: str = ""  # PGN suite of opening lines from the start position; empty: the arena's bundled suite
    # Mistakes after the opening: each move is, with probability ``mistake_rate`` (drawn from a
    # stream of the game's own, so a rerun plays the same game), not Stockfish's move at the
    # budget but a uniformly random legal move (``mistake_nodes: 0``) or Stockfish's move at
    # ``mistake_nodes`` nodes (a shallow, plausible error). The other side then plays on as
    # usual, so the set holds positions where a blunder is there to punish or to survive:
    # rare in games of one budget against itself, common in a weak engine's games.
    mistake_rate: float = 0.0
    mistake_nodes: int = 0
    claim_draws: bool = True  # end games at threefold repetition / fifty moves (as claimable draws)
    max_plies: int = 1000  # safety net: longer games are discarded (and counted)
    # Stop after this many seconds (0 = no limit): each worker finishes its game and writes
    # the games it played as a chunk named by their index range, so a rerun resumes exactly.
    max_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.games < 1:
            raise ConfigError(f"games must be >= 1, not {self.games}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0 (0 = one per core), not {self.workers}")
        if self.chunk_games < 1:
            raise ConfigError(f"chunk_games must be >= 1, not {self.chunk_games}")
        if min(self.nodes, self.depth, self.movetime_ms) < 0:
            raise ConfigError("nodes, depth and movetime_ms must be >= 0")
        if not (self.nodes or self.depth or self.movetime_ms):
            raise ConfigError("set a search budget per move: nodes, depth or movetime_ms (> 0)")
        if self.elo < 0:
            raise ConfigError(f"elo must be >= 0 (0 = full strength), not {self.elo}")
        if not 0 <= self.random_plies_min <= self.random_plies_max:
            raise ConfigError(
                f"need 0 <= random_plies_min <= random_plies_max, got {self.random_plies_min}, {self.random_plies_max}"
            )
        if self.max_plies < 1:
            raise ConfigError(f"max_plies must be >= 1, not {self.max_plies}")
        if not 0.0 <= self.nodes_jitter < 1.0:
            raise ConfigError(f"nodes_jitter must be in [0, 1), not {self.nodes_jitter}")
        if self.nodes_jitter and not self.nodes:
            raise ConfigError("nodes_jitter needs a node budget (nodes > 0)")
        if self.jitter_per_move and not self.nodes_jitter:
            raise ConfigError("jitter_per_move needs nodes_jitter > 0 (the range the budgets are drawn from)")
        if not 0.0 <= self.book_fraction <= 1.0:
            raise ConfigError(f"book_fraction must be in [0, 1], not {self.book_fraction}")
        if self.max_seconds < 0:
            raise ConfigError(f"max_seconds must be >= 0 (0 = no limit), not {self.max_seconds}")
        if not 0.0 <= self.mistake_rate < 1.0:
            raise ConfigError(f"mistake_rate must be in [0, 1), not {self.mistake_rate}")
        if self.mistake_nodes < 0:
            raise ConfigError(f"mistake_nodes must be >= 0 (0 = a uniformly random legal move), not {self.mistake_nodes}")
        if self.mistake_nodes and not self.mistake_rate:
            raise ConfigError("mistake_nodes needs mistake_rate > 0 (how often a move is the mistake)")
        if self.hash_mb < 1:
            raise ConfigError(f"hash_mb must be >= 1, not {self.hash_mb}")

    @property
    def worker_count(self) -> int:
        return self.workers or cpu_count()


# -- data set building ---------------------------------------------------------------------


@dataclasses.dataclass
class SourceConfig:
    path: str = ""  # a file, a folder (its *.parquet / *.pgn / *.pgn.zst / *.mcg files) or a glob
    # auto: by file suffix; packed: games packed by `dataset pack-games` (*.mcg)
    format: Literal["auto", "laion", "pgn", "packed"] = "auto"
    max_games: int = 0  # games read from this source (after filters); 0 = all
    # Filters (counted in the stats as `filtered`, not as corrupt):
    min_plies: int = 0  # games shorter than this are skipped
    results: list[str] = dataclasses.field(default_factory=list)  # allowed results; empty = all
    min_elo: int = 0  # PGN only: both WhiteElo and BlackElo at least this (games without Elo are skipped)
    time_controls: list[str] = dataclasses.field(default_factory=list)  # PGN only: categories or exact "600+0"

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("a source needs a path (a file, a folder or a glob)")
        for r in self.results:
            if r not in RESULTS:
                raise ConfigError(f"results: {r!r} is not one of {', '.join(RESULTS)}")
        for tc in self.time_controls:
            if tc not in TIME_CONTROL_CATEGORIES and not _is_time_control(tc):
                raise ConfigError(
                    f"time_controls: {tc!r} is neither a category ({', '.join(TIME_CONTROL_CATEGORIES)}) "
                    "nor a PGN TimeControl value like 600+0 or -"
                )
        if self.min_plies < 0 or self.min_elo < 0 or self.max_games < 0:
            raise ConfigError("min_plies, min_elo and max_games must be >= 0")


def _is_time_control(text: str) -> bool:
    if text == "-":
        return True
    base, _, inc = text.partition("+")
    return base.isdigit() and (inc == "" or inc.isdigit())


_PLAY = PromptConfig()


@dataclasses.dataclass
class PlayersConfig:
    """Who the PGN header names, and with which Elo.

    ``play`` (default) writes the headers exactly as the engine writes them at play
    time with its default prompt config: the side to move is ``engine_name`` /
    ``engine_elo``, the other side ``opponent_name`` / ``opponent_elo`` (0 leaves the
    tag out). The engine's ``prompt`` section must then use the same names and Elos.
    ``source`` takes names and Elos from the source where it has them (PGN files)
    and ``white``/``black``/``white_elo``/``black_elo`` where not (LAION, self-play).
    The Result header is always the game's real result.
    """

    mode: Literal["play", "source"] = "play"
    engine_name: str = _PLAY.engine_name
    opponent_name: str = _PLAY.opponent_name
    engine_elo: int = _PLAY.engine_elo
    opponent_elo: int = _PLAY.opponent_elo
    white: str = "?"
    black: str = "?"
    white_elo: int = 0
    black_elo: int = 0


@dataclasses.dataclass
class ExamplesConfig:
    template: str = "pgn-base"  # engine prompt template (bundled name or YAML path)
    # Kinds of example and their weights: each sampled position gets a kind drawn by weight.
    # next_move: completion = " <SAN>"; continuation: completion = the rest of the move text.
    kinds: dict[str, float] = dataclasses.field(default_factory=lambda: {"next_move": 1.0})
    positions_per_game: int = 8  # examples per game (sampled positions); 0 = every eligible position
    moves: Literal["all", "winner"] = "all"  # winner: only positions where the eventual winner moves
    draws: Literal["keep", "skip"] = "keep"  # with moves=winner: keep both sides of drawn games, or skip them
    min_ply: int = 0  # first eligible position (plies played before it)
    max_ply: int = 0  # last eligible position + 1; 0 = to the end
    continuation_plies: int = 0  # moves in a continuation; 0 = to the end of the game
    end_with_result: bool = True  # a continuation that reaches the end writes the result (then EOS)
    # Board windows: > 0 roots every prompt at the position of the last ply that is a multiple
    # of window_plies ([SetUp]/[FEN] tags, then that window's moves), as the engine writes it
    # with prompt.window_plies; continuations then start at window starts and end with their
    # window. 0: the whole game from its start.
    window_plies: int = 0
    # Where a game's windows start. 0: at plies 0, window_plies, 2 * window_plies, ..., where the
    # engine starts them (prompt.window_offset: 0). -1: at plies k, k + window_plies, ... (and
    # ply 0 before k) with k drawn for each game from 0..window_plies-1 (seeded by the game and
    # examples.seed), so a game's windows start anywhere: a model trained at offset 0 only reads
    # windows that start elsewhere much worse (the bundled model's card). Such a model is played
    # at the engine's offset 0, one of those it was trained on.
    window_offset: int = 0
    # Rules targets: for each move a training example trains on, the first tokens of every
    # legal move's " SAN" in its position (a legal_ids column; needs a tokenized build). The
    # trainer's train.rules_loss_weight then teaches the model to put its mass on legal moves.
    legal_tokens: bool = False
    seed: int = 0  # position sampling; example choice for a game depends only on (seed, game id)

    def __post_init__(self) -> None:
        if not self.kinds:
            raise ConfigError("kinds: give at least one example kind with a weight")
        for kind, weight in self.kinds.items():
            if kind not in EXAMPLE_KINDS:
                raise ConfigError(f"kinds: unknown kind {kind!r} (allowed: {', '.join(EXAMPLE_KINDS)})")
            if weight < 0:
                raise ConfigError(f"kinds.{kind}: weight must be >= 0, not {weight}")
        if sum(self.kinds.values()) <= 0:
            raise ConfigError("kinds: the weights sum to 0")
        if self.positions_per_game < 0 or self.min_ply < 0 or self.max_ply < 0 or self.continuation_plies < 0:
            raise ConfigError("positions_per_game, min_ply, max_ply and continuation_plies must be >= 0")
        if self.window_plies < 0:
            raise ConfigError(f"window_plies must be >= 0 (0: the whole game), not {self.window_plies}")
        if self.window_offset not in (0, -1):
            raise ConfigError(
                f"window_offset must be 0 (windows where the engine starts them) or -1 (drawn for "
                f"each game), not {self.window_offset}"
            )
        if self.window_offset == -1 and self.window_plies < 2:
            raise ConfigError(f"window_offset -1 needs board windows of 2 plies or more (window_plies is {self.window_plies})")
        if self.max_ply and self.max_ply <= self.min_ply:
            raise ConfigError(f"max_ply ({self.max_ply}) must be > min_ply ({self.min_ply}) or 0")


@dataclasses.dataclass
class SplitConfig:
    validation_fraction: float = 0.02  # share of GAMES (never positions) held out
    seed: int = 0  # the split is a hash of (seed, the game's moves): stable when data is added
    # Next-move positions per validation game written to eval-*.parquet (with their FEN) for
    # the trainer's exact-move accuracy and legal-move rate, whatever the example kinds are.
    eval_positions_per_game: int = 4

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction must be in [0, 1), not {self.validation_fraction}")
        if self.eval_positions_per_game < 0:
            raise ConfigError(f"eval_positions_per_game must be >= 0, not {self.eval_positions_per_game}")


@dataclasses.dataclass
class DatasetConfig:
    sources: list[SourceConfig] = dataclasses.field(default_factory=list)
    out: str = "data/dataset"  # output folder (train-*.parquet, validation-*.parquet, stats.json)
    overwrite: bool = False  # replace an existing output folder
    max_games: int = 0  # overall cap on games read (after filters); 0 = all
    # Keep one copy of games with the same moves from the same start (across all sources, the
    # first read wins); the others count as filtered "duplicate". Off by default, so the builds
    # of the shipped models stay as they were; self-play sets repeat their book games.
    dedupe: bool = False
    # Leave out the games of these (filtered as "excluded"): built data-set folders (their
    # games.keys, fast) or game files and folders (LAION parquet, packed .mcg: read and hashed,
    # about 1 ms a game). E.g. the games an earlier model trained on, or a first part of a build
    # made in parts (`dataset merge`).
    exclude: list[str] = dataclasses.field(default_factory=list)
    players: PlayersConfig = dataclasses.field(default_factory=PlayersConfig)
    examples: ExamplesConfig = dataclasses.field(default_factory=ExamplesConfig)
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    # Tokenizer folder to pre-tokenize with (input_ids + prompt_tokens columns); "mistral" =
    # the Mistral-7B tokenizer shipped by mistral-common; "" = text only (the trainer tokenizes).
    tokenizer: str = "mistral"
    max_length: int = 2048  # tokens (when tokenized): longer examples are dropped and counted
    workers: int = 0  # conversion processes; 0 = one per CPU core
    batch_games: int = 512  # games per work unit sent to a worker
    shard_examples: int = 100_000  # examples per output parquet file
    verify_tokens_every: int = 997  # compare fast tokenization with direct tokenization every N examples; 0 = never

    def __post_init__(self) -> None:
        if self.examples.legal_tokens and not self.tokenizer:
            raise ConfigError("examples.legal_tokens needs a tokenized build: set tokenizer (a folder, or mistral)")
        if self.workers < 0 or self.max_games < 0:
            raise ConfigError("workers and max_games must be >= 0")
        if self.batch_games < 1 or self.shard_examples < 1:
            raise ConfigError("batch_games and shard_examples must be >= 1")
        if self.max_length < 16:
            raise ConfigError(f"max_length must be >= 16, not {self.max_length}")
        for i, path in enumerate(self.exclude):
            if not path:
                raise ConfigError(f"exclude[{i}]: an empty path (give a data-set folder, or game files)")

    @property
    def worker_count(self) -> int:
        return self.workers or cpu_count()


# -- training ---------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelSection:
    # pretrained: fine-tune `path` (a local folder or hub name) with LoRA / QLoRA or fully.
    # scratch: a new MistralForCausalLM of the size below (full weights; `path` unused).
    init: Literal["pretrained", "scratch"] = "pretrained"
    path: str = ""
    revision: str = ""
    # Tokenizer: empty = the one in `path`; "mistral" = Mistral-7B's (from mistral-common);
    # "chess-bpe" = a small byte-level BPE trained on the training set's text (scratch models:
    # a 32k-token embedding would dominate a small model); or a tokenizer folder.
    tokenizer: str = ""
    tokenizer_vocab_size: int = 4096  # for chess-bpe
    # FEN boards one token a square (training/chess_tokenizer.py: with_board_squares): the
    # project's chess BPE only (chess-bpe, or a model folder trained with it); the token ids
    # stay, so a model trained on plain FEN text can go on training with it.
    tokenizer_board_squares: bool = False
    dtype: Literal["bfloat16", "float16", "float32", "auto"] = "auto"  # auto: bf16 on cuda, fp32 on cpu
    attn_implementation: str = "sdpa"
    # Architecture of a scratch model (MistralConfig names).
    hidden_size: int = 256
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    intermediate_size: int = 768
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0


@dataclasses.dataclass
class QuantSection:
    load_in_4bit: bool = False  # QLoRA: NF4 base (needs a CUDA GPU and bitsandbytes)
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


@dataclasses.dataclass
class LoraSection:
    enabled: bool = True  # false: train all weights (scratch models, small full fine-tunes)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = dataclasses.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def __post_init__(self) -> None:
        if self.lora_r < 1:
            raise ConfigError(f"lora.lora_r must be >= 1, not {self.lora_r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora.lora_dropout must be in [0, 1), not {self.lora_dropout}")
        if self.enabled and not self.target_modules:
            raise ConfigError("lora.target_modules must name at least one module")


@dataclasses.dataclass
class DataSection:
    path: str = ""  # a folder written by `mistral-chess dataset build`
    max_length: int = 1024  # tokens per packed row (and per example: longer ones are dropped)
    packing: bool = True  # several examples per row, attention kept inside each example
    max_train_examples: int = 0  # 0 = all
    max_eval_examples: int = 512  # validation examples for the validation loss; 0 = all


@dataclasses.dataclass
class EvalSection:
    eval_steps: int = 200  # evaluate every N optimizer steps (and at the end); 0 = only at the end
    eval_batch_size: int = 8
    generation_positions: int = 64  # held-out next-move positions for accuracy / legal-move rate
    max_new_tokens: int = 8
    generation_batch_size: int = 16


@dataclasses.dataclass
class TrainSection:
    output_dir: str = "runs/qlora"
    seed: int = 42
    max_steps: int = 1000  # optimizer steps (num_train_epochs is ignored when > 0)
    num_train_epochs: float = 1.0  # used when max_steps = 0
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 4
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler_type: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.03  # used when warmup_steps = 0
    min_lr_ratio: float = 0.0  # cosine floor as a share of learning_rate
    optim: Literal["adamw_torch", "paged_adamw_8bit", "adamw_8bit"] = "adamw_torch"
    gradient_checkpointing: bool = True
    bf16: bool = True  # autocast to bf16 on cuda (ignored on cpu)
    logging_steps: int = 10
    save_steps: int = 200  # checkpoint every N steps (and at the end); 0 = only at the end
    save_total_limit: int = 2  # checkpoints kept (the newest); 0 = all
    resume: Literal["auto", "never"] = "auto"  # auto: continue from the newest checkpoint in output_dir
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # torch CPU threads (0 = torch default)
    check_memory: bool = True  # estimate GPU memory from the config and refuse runs that cannot fit
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # full models; auto = float32
    stop_after_steps: int = 0  # testing aid: end the process abruptly after this step (simulates a kill)
    # Share of the decoder layers that recompute their activations in the backward pass when
    # gradient_checkpointing is on (the first round(fraction * layers) of them): 1.0 = all,
    # 0.0 = none. Fewer recomputed layers are faster and hold more memory.
    gradient_checkpointing_fraction: float = 1.0
    # torch.compile the training forward (any device; measured on CUDA, where it pays;
    # evaluation and generation stay eager).
    # Rows are then padded to data.max_length so that every step has one shape and one graph.
    compile: bool = False
    # The rules loss (a data set built with examples.legal_tokens): for every move the model is
    # trained on, -log of the probability its first token gives to the first tokens of all legal
    # moves, summed and divided like the cross-entropy (by the completion tokens), times this
    # weight, added to the loss. 0: off. One process only.
    rules_loss_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.rules_loss_weight < 0:
            raise ConfigError(f"train.rules_loss_weight must be >= 0, not {self.rules_loss_weight}")
        if not 0.0 <= self.gradient_checkpointing_fraction <= 1.0:
            raise ConfigError(
                f"train.gradient_checkpointing_fraction must be in [0, 1], not {self.gradient_checkpointing_fraction}"
            )
        if self.max_steps < 0:
            raise ConfigError(f"train.max_steps must be >= 0, not {self.max_steps}")
        if self.max_steps == 0 and self.num_train_epochs <= 0:
            raise ConfigError("train: set max_steps > 0 or num_train_epochs > 0")
        if self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ConfigError("train.per_device_train_batch_size and gradient_accumulation_steps must be >= 1")
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate must be > 0, not {self.learning_rate}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), not {self.warmup_ratio}")
        if self.logging_steps < 1:
            raise ConfigError("train.logging_steps must be >= 1")
        if self.save_steps < 0 or self.save_total_limit < 0:
            raise ConfigError("train.save_steps and train.save_total_limit must be >= 0")


LigerKernel = Literal["rms_norm", "rope", "swiglu", "fused_linear_cross_entropy"]
LIGER_KERNELS: tuple[LigerKernel, ...] = ("rms_norm", "rope", "swiglu", "fused_linear_cross_entropy")


@dataclasses.dataclass
class FastSection:
    """The fast training path (docs/training.md, "Fast mode")."""

    # On: the Liger kernels below and non-reentrant checkpointing of
    # train.gradient_checkpointing_fraction of the layers; with LoRA, also a frozen base
    # that keeps its own dtype (no fp32 upcast of embeddings, norms and lm_head by peft's
    # prepare_model_for_kbit_training).
    enabled: bool = False
    # Liger Triton kernels (liger-kernel, CUDA only). auto: used on CUDA when installed,
    # otherwise the plain kernels with a logged warning; true: required (a run without
    # them is refused); false: never.
    liger: bool | Literal["auto"] = "auto"
    liger_kernels: list[LigerKernel] = dataclasses.field(default_factory=lambda: list(LIGER_KERNELS))

    def __post_init__(self) -> None:
        if len(set(self.liger_kernels)) != len(self.liger_kernels):
            raise ConfigError(f"fast.liger_kernels: {self.liger_kernels} names a kernel twice")


@dataclasses.dataclass
class QatSection:
    """Quantization-aware training of a full model for the 4-bit store (engine/int8store.py)."""

    # Module names (the last part: gate_proj, up_proj, down_proj) whose weights every
    # training forward rounds to 4 bits (levels -7..7, a scale per int4_group weights of a
    # row), the gradient passing the rounding as if it were not there (straight-through).
    # Empty: off. On, the models the run saves for the engine (the final one, checkpoint
    # exports) are stored quantized: these modules in 4 bits, the other 2-D weights in 8.
    int4_modules: list[str] = dataclasses.field(default_factory=list)
    int4_group: int = 32
    int8_group: int = 64  # scale group of the other 2-D weights in the saved model (0: one a row)

    def __post_init__(self) -> None:
        if self.int4_group < 2 or self.int4_group % 2:
            raise ConfigError(f"qat.int4_group must be an even number >= 2, not {self.int4_group}")
        if self.int8_group < 0:
            raise ConfigError(f"qat.int8_group must be >= 0, not {self.int8_group}")
        if len(set(self.int4_modules)) != len(self.int4_modules):
            raise ConfigError(f"qat.int4_modules: {self.int4_modules} names a module twice")


@dataclasses.dataclass
class TrainConfig:
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    quantization: QuantSection = dataclasses.field(default_factory=QuantSection)
    lora: LoraSection = dataclasses.field(default_factory=LoraSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    fast: FastSection = dataclasses.field(default_factory=FastSection)
    qat: QatSection = dataclasses.field(default_factory=QatSection)
    template: str = "pgn-base"  # prompt template of the evaluation prompts (must match the data set's)
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.model.init == "scratch" and self.lora.enabled:
            raise ConfigError("model.init=scratch trains all weights: set lora.enabled=false")
        if self.model.init == "scratch" and self.quantization.load_in_4bit:
            raise ConfigError("model.init=scratch cannot be 4-bit: set quantization.load_in_4bit=false")
        if self.quantization.load_in_4bit and not self.lora.enabled:
            raise ConfigError("a 4-bit base cannot be trained fully: QLoRA needs lora.enabled=true")
        if self.qat.int4_modules and (self.lora.enabled or self.quantization.load_in_4bit):
            raise ConfigError(
                "qat.int4_modules trains a full model for 4-bit storage: set lora.enabled=false and "
                "quantization.load_in_4bit=false (a LoRA adapter over a frozen base has no weights to adapt)"
            )
        if self.model.init == "pretrained" and not self.model.path:
            raise ConfigError("model.path: give the base model (a folder or a hub name) to fine-tune")
        if self.model.tokenizer_board_squares and self.model.tokenizer == "mistral":
            raise ConfigError(
                "model.tokenizer_board_squares rewrites the project's chess BPE tokenizer (model.tokenizer=chess-bpe, "
                "or a model folder trained with it), not the Mistral tokenizer"
            )
        if self.model.init == "pretrained" and self.model.tokenizer == "chess-bpe":
            # A new BPE numbers its tokens its own way: the pretrained embeddings would be read
            # with the wrong ids, and training would go on silently from a broken model.
            raise ConfigError(
                "model.tokenizer=chess-bpe trains a new tokenizer, whose token ids a pretrained model's "
                "embeddings do not know: it is for model.init=scratch; to go on training "
                f"{self.model.path!r}, leave model.tokenizer empty (its own tokenizer)"
            )


def _load(cls: type[Any], path: str | Path | None, overrides: Iterable[str] | Mapping[str, Any]) -> Any:
    return load_config(cls, path, overrides)


def load_selfplay_config(path: str | Path | None = None, overrides: Iterable[str] | Mapping[str, Any] = ()) -> SelfPlayConfig:
    cfg: SelfPlayConfig = _load(SelfPlayConfig, path, overrides)
    return cfg


def load_dataset_config(path: str | Path | None = None, overrides: Iterable[str] | Mapping[str, Any] = ()) -> DatasetConfig:
    cfg: DatasetConfig = _load(DatasetConfig, path, overrides)
    if not cfg.sources:
        raise ConfigError("sources: name at least one game source (a LAION parquet or PGN file, folder or glob)")
    return cfg


def load_train_config(path: str | Path | None = None, overrides: Iterable[str] | Mapping[str, Any] = ()) -> TrainConfig:
    cfg: TrainConfig = _load(TrainConfig, path, overrides)
    return cfg
