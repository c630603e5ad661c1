"""Engine descriptions: what to start, with which UCI options, under which name.

An engine is given as a first word and optional ``key=value`` words, in the manner
of cutechess-cli's ``-engine cmd=... name=... option.Hash=16``:

``mistral:PATH``
    The project's engine, run as ``python -m engine``. PATH is a model folder, a
    LoRA adapter folder (its base comes from ``adapter_config.json``) or an engine
    YAML config; an empty PATH means the default model. Extra words:
    ``adapter=DIR``, ``config=FILE`` and any engine config override
    (``search.mode=generate``, ``model.threads=1``).
``stockfish:ELO`` / ``stockfish``
    Stockfish with ``UCI_LimitStrength`` and ``UCI_Elo`` (clamped to the range the
    installed Stockfish accepts; the report says so) / at full strength.
anything else
    A UCI command line (``"/usr/bin/my-engine --uci"``), or ``cmd=PROGRAM``.

Words every engine accepts: ``name=``, ``option.NAME=VALUE`` (UCI setoption),
``arg=`` (one more program argument), ``cwd=DIR``, and its own limits ``tc=``,
``movetime=`` (ms), ``nodes=``, ``depth=`` that replace the match's for it alone.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from arena.clock import TimeControl, parse_time_control
from arena.errors import EngineSpecError, StockfishNotFoundError
from engine.errors import ConfigError

STOCKFISH_ENV = "STOCKFISH_PATH"
DEBIAN_STOCKFISH = "/usr/games/stockfish"
STOCKFISH_THREADS = 1
STOCKFISH_HASH_MB = 16


@dataclasses.dataclass
class EngineSpec:
    """A resolved engine: everything needed to start and configure it."""

    name: str
    command: list[str]
    kind: str = "uci"  # mistral | stockfish | uci
    options: dict[str, str] = dataclasses.field(default_factory=dict)
    cwd: str | None = None
    limits: dict[str, Any] = dataclasses.field(default_factory=dict)  # tc, movetime, nodes, depth
    elo: int | None = None  # Stockfish's effective UCI_Elo
    requested_elo: int | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    spec: str = ""  # what the user wrote

    def time_control(self, default: TimeControl) -> TimeControl:
        """The match's time control with this engine's own limits applied."""
        if not self.limits:
            return default
        tc_text = self.limits.get("tc")
        base = parse_time_control(tc_text) if tc_text and tc_text not in ("inf", "none") else None
        return TimeControl(
            base_ms=base.base_ms if base else (None if tc_text else default.base_ms),
            inc_ms=base.inc_ms if base else (0 if tc_text else default.inc_ms),
            moves=base.moves if base else (0 if tc_text else default.moves),
            movetime_ms=self.limits.get("movetime", default.movetime_ms),
            nodes=self.limits.get("nodes", default.nodes),
            depth=self.limits.get("depth", default.depth),
        )

    def identity(self) -> dict[str, Any]:
        """What must not change when a match resumes."""
        return {"name": self.name, "command": self.command, "options": self.options, "limits": self.limits}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if v not in (None, [], {}, "")}


# A folder the engine can load: a Hugging Face model (config.json) or a LoRA adapter.
MODEL_MARKERS = ("config.json", "adapter_config.json")


def is_model_folder(p: Path) -> bool:
    return any((p / marker).is_file() for marker in MODEL_MARKERS)

def find_stockfish(explicit: str | None = None) -> str:
    """``explicit``, else $STOCKFISH_PATH, else ``stockfish`` on PATH, else /usr/games/stockfish.

    A path the user gave explicitly must be there: it is never silently replaced by
    another Stockfish.
    """
    if explicit and not (Path(explicit).is_file() and os.access(explicit, os.X_OK)):
        raise StockfishNotFoundError(f"Stockfish not found at the given path {explicit!r} (not an executable file)")
    tried = []
    for label, candidate in (
        ("given path", explicit),
        (f"${STOCKFISH_ENV}", os.environ.get(STOCKFISH_ENV)),
        ("'stockfish' on PATH", shutil.which("stockfish")),
        (DEBIAN_STOCKFISH, DEBIAN_STOCKFISH),
    ):
        if not candidate:
            if label != "given path":
                tried.append(f"{label} (not set)" if label.startswith("$") else f"{label} (none)")
            continue
        if Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
        tried.append(f"{label} = {candidate} (not an executable file)")
    raise StockfishNotFoundError(
        "Stockfish not found; looked at "
        + "; ".join(tried)
        + ". Install it (Debian: apt-get install stockfish) "
        f"or set {STOCKFISH_ENV} to the binary"
    )


@dataclasses.dataclass(frozen=True)
class StockfishInfo:
    path: str
    name: str
    elo_min: int | None
    elo_max: int | None


def probe_stockfish(path: str, timeout: float = 15.0) -> StockfishInfo:
    """Ask a Stockfish binary for its name and its ``UCI_Elo`` range."""
    try:
        out = subprocess.run(
            [path], input="uci\nquit\n", capture_output=True, text=True, timeout=timeout, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StockfishNotFoundError(f"{path}: could not run it as a UCI engine ({exc})") from None
    name = Path(path).name
    elo_min = elo_max = None
    for line in out.splitlines():
        words = line.split()
        if line.startswith("id name "):
            name = line[len("id name ") :].strip()
        if len(words) > 2 and words[:3] == ["option", "name", "UCI_Elo"]:
            for key in ("min", "max"):
                if key in words:
                    value = int(words[words.index(key) + 1])
                    if key == "min":
                        elo_min = value
                    else:
                        elo_max = value
    if "uciok" not in out:
        raise StockfishNotFoundError(f"{path}: no 'uciok' from it; is it a UCI engine?")
    return StockfishInfo(path, name, elo_min, elo_max)


def _split_words(words: list[str]) -> tuple[str, dict[str, str], list[str], list[str]]:
    """(first word, key=value pairs, extra args, engine config overrides)."""
    if not words:
        raise EngineSpecError("empty engine description")
    first, rest = words[0], words[1:]
    pairs: dict[str, str] = {}
    args: list[str] = []
    overrides: list[str] = []
    for word in rest:
        if "=" not in word:
            raise EngineSpecError(
                f"engine {first!r}: {word!r} is not key=value (keys: name, option.NAME, arg, cwd, tc, movetime, "
                "nodes, depth; for mistral: also adapter, config and engine overrides like search.mode=generate)"
            )
        key, value = word.split("=", 1)
        if key == "arg":
            args.append(value)
        elif "." in key and not key.startswith("option."):
            overrides.append(word)
        else:
            pairs[key] = value
    return first, pairs, args, overrides


_COMMON_KEYS = {"name", "cwd", "tc", "movetime", "nodes", "depth", "cmd"}


def _limits(first: str, pairs: dict[str, str]) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if "tc" in pairs:
        parse_time_control(pairs["tc"] if pairs["tc"] not in ("inf", "none") else None, nodes=1)  # validate
        limits["tc"] = pairs["tc"]
    for key in ("movetime", "nodes", "depth"):
        if key in pairs:
            try:
                value = int(pairs[key])
            except ValueError:
                raise EngineSpecError(f"engine {first!r}: {key}={pairs[key]!r} is not an integer") from None
            if value <= 0:
                raise EngineSpecError(f"engine {first!r}: {key} must be positive")
            limits[key] = value
    return limits


def parse_engine(words: list[str] | str, *, stockfish_path: str | None = None) -> EngineSpec:
    """Read one engine description (see the module docstring)."""
    if isinstance(words, str):
        words = shlex.split(words)
    spec_text = shlex.join(words)
    first, pairs, args, overrides = _split_words(words)
    options = {k[len("option.") :]: v for k, v in pairs.items() if k.startswith("option.")}
    for key in pairs:
        if key.startswith("option.") and not key[len("option.") :]:
            raise EngineSpecError(f"engine {first!r}: option name missing in {key!r}")
    limits = _limits(first, pairs)
    cwd = pairs.get("cwd")
    if cwd and not Path(cwd).is_dir():
        raise EngineSpecError(f"engine {first!r}: working directory {cwd!r} does not exist")

    if first.startswith("mistral:") or first == "mistral":
        spec = _mistral(first, pairs, overrides)
    elif first.startswith("stockfish:") or first == "stockfish":
        spec = _stockfish(first, pairs, stockfish_path)
    else:
        if overrides:
            raise EngineSpecError(
                f"engine {first!r}: {overrides[0]!r}: dotted keys are engine config overrides, only for mistral:"
            )
        bad = [k for k in pairs if k not in _COMMON_KEYS and not k.startswith("option.")]
        if bad:
            raise EngineSpecError(
                f"engine {first!r}: unknown key {bad[0]!r} (allowed: name, option.NAME, arg, cwd, tc, movetime, nodes, depth)"
            )
        if "cmd" in pairs:
            raise EngineSpecError(f"engine {first!r}: cmd= must be the first word")
        command = shlex.split(first[len("cmd=") :] if first.startswith("cmd=") else first)
        if not command:
            raise EngineSpecError("engine command is empty")
        program = command[0]
        resolved = shutil.which(program, path=os.environ.get("PATH")) if os.sep not in program else program
        if cwd and os.sep in program and not os.path.isabs(program):
            resolved = str(Path(cwd) / program)
        if resolved is None or not Path(resolved).exists():
            raise EngineSpecError(f"engine program {program!r} not found (give a path or put it on PATH)")
        spec = EngineSpec(name=Path(program).name, command=command, kind="uci")
    spec.command = spec.command + args
    spec.options.update(options)
    spec.limits = limits
    spec.cwd = cwd
    spec.spec = spec_text
    if "name" in pairs:
        if not pairs["name"].strip():
            raise EngineSpecError(f"engine {first!r}: empty name")
        spec.name = pairs["name"]
    return spec


def _mistral(first: str, pairs: dict[str, str], overrides: list[str]) -> EngineSpec:
    from engine.config import EngineConfig, load_engine_config  # light: no torch

    top_level = {f.name for f in dataclasses.fields(EngineConfig)}  # log_level, log_file
    overrides = overrides + [f"{k}={v}" for k, v in pairs.items() if k in top_level]
    bad = [
        k
        for k in pairs
        if k not in _COMMON_KEYS | {"adapter", "config"} | top_level and not k.startswith("option.")
    ]
    if bad:
        raise EngineSpecError(
            f"engine {first!r}: unknown key {bad[0]!r} (allowed: adapter, config, name, option.NAME, "
            "arg, cwd, tc, movetime, nodes, depth, or an engine override like search.mode=generate)"
        )
    target = first.split(":", 1)[1] if ":" in first else ""
    config = pairs.get("config", "")
    model = ""
    if target:
        path = Path(target).expanduser()
        if path.is_file() and path.suffix in (".yaml", ".yml"):
            config = str(path)
        elif path.is_dir():
            if not is_model_folder(path):
                inner = sorted(p.name for p in path.iterdir() if p.is_dir() and is_model_folder(p))
                hint = f" (a model is in {', '.join(str(path / n) for n in inner)})" if inner else ""
                raise EngineSpecError(
                    f"mistral engine: {target!r} holds no model: no {' or '.join(MODEL_MARKERS)}{hint}; the engine "
                    "would play random fallback moves"
                )
            model = str(path)
        elif target.startswith((".", "/", "~")) or not path.parent.exists() or path.suffix:
            raise EngineSpecError(
                f"mistral engine: {target!r} is neither a model folder nor an engine YAML config"
            )
        else:
            model = target  # a hub name such as mistralai/Mistral-7B-v0.1
    adapter = pairs.get("adapter", "")
    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        raise EngineSpecError(f"mistral engine: adapter folder {adapter!r} has no adapter_config.json")
    if config and not Path(config).is_file():
        raise EngineSpecError(f"mistral engine: config file {config!r} not found")
    # Check the overrides now, so a typo is an error here and not a silent engine failure.
    extra: dict[str, Any] = {}
    try:
        from engine.configtools import parse_overrides

        extra = parse_overrides(overrides)
        load_engine_config(config or None, extra)
    except ConfigError as exc:
        raise EngineSpecError(f"mistral engine: {exc}") from None
    command = [sys.executable, "-m", "engine"]
    if config:
        command += ["--config", config]
    if model:
        command += ["--model", model]
    if adapter:
        command += ["--adapter", adapter]
    command += overrides
    label = (
        Path(adapter).name
        if adapter
        else (Path(model).name if model else (Path(config).stem if config else "default"))
    )
    return EngineSpec(name=f"mistral-chess({label})", command=command, kind="mistral")


def _stockfish(first: str, pairs: dict[str, str], stockfish_path: str | None) -> EngineSpec:
    bad = [k for k in pairs if k not in _COMMON_KEYS and not k.startswith("option.")]
    if bad:
        raise EngineSpecError(f"engine {first!r}: unknown key {bad[0]!r}")
    path = find_stockfish(pairs.get("cmd") or stockfish_path)
    info = probe_stockfish(path)
    options = {"Threads": str(STOCKFISH_THREADS), "Hash": str(STOCKFISH_HASH_MB)}
    spec = EngineSpec(name="Stockfish", command=[path], kind="stockfish", options=options)
    if ":" not in first or not first.split(":", 1)[1]:
        return spec
    raw = first.split(":", 1)[1]
    try:
        requested = int(raw)
    except ValueError:
        raise EngineSpecError(f"stockfish:{raw}: the Elo must be an integer (e.g. stockfish:1500)") from None
    elo = requested
    if info.elo_min is None or info.elo_max is None:
        raise EngineSpecError(f"{info.name} ({path}) has no UCI_Elo option: cannot limit its strength")
    if not info.elo_min <= requested <= info.elo_max:
        elo = min(max(requested, info.elo_min), info.elo_max)
        spec.notes.append(
            f"UCI_Elo {requested} is outside the {info.elo_min}..{info.elo_max} that {info.name} accepts: "
            f"plays at {elo}"
        )
    spec.options.update({"UCI_LimitStrength": "true", "UCI_Elo": str(elo)})
    spec.elo = elo
    spec.requested_elo = requested
    spec.name = f"Stockfish {elo}"
    return spec


def unique_names(specs: list[EngineSpec]) -> None:
    """Make engine names unique (``X``, ``X (2)``): results are keyed by name."""
    seen: dict[str, int] = {}
    for spec in specs:
        base = spec.name
        if base in seen:
            seen[base] += 1
            spec.name = f"{base} ({seen[base]})"
        else:
            seen[base] = 1
