"""Engine configuration: defaults, YAML, overrides and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import EngineConfig, load_engine_config
from engine.configtools import parse_overrides
from engine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_committed_engine_yaml_equals_the_defaults() -> None:
    # configs/engine.yaml documents the defaults; it must not drift from the code.
    assert load_engine_config(ROOT / "configs" / "engine.yaml") == EngineConfig()


def test_overrides_beat_yaml_and_yaml_beats_defaults(tmp_path) -> None:
    f = tmp_path / "e.yaml"
    f.write_text("search:\n  mode: generate\n  retries: 5\nmodel:\n  path: /x\n")
    cfg = load_engine_config(f, ["search.retries=1", "time.move_overhead_ms=250"])
    assert cfg.search.mode == "generate"
    assert cfg.search.retries == 1
    assert cfg.time.move_overhead_ms == 250
    assert cfg.model.path == "/x"
    assert cfg.search.temperature == 0.0  # default kept


def test_unknown_key_names_the_dotted_key_and_allowed_ones(tmp_path) -> None:
    f = tmp_path / "e.yaml"
    f.write_text("search:\n  mdoe: generate\n")
    with pytest.raises(ConfigError) as err:
        load_engine_config(f)
    assert "search.mdoe" in str(err.value)
    assert "mode" in str(err.value) and "retries" in str(err.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("search.mode=fast", "search.mode: 'fast' is not one of"),
        ("search.retries=lots", "search.retries: expected an integer"),
        ("search.retries=-1", "search.retries must be >= 0"),
        ("resign.threshold=2", "resign.threshold must be in"),
        ("model.device=tpu", "model.device"),
        ("model.nf4_kernel_rows=-8", "model.nf4_kernel_rows must be >= 0"),
        ("nosection.x=1", "unknown config key nosection"),
        ("search", "not of the form key=value"),
    ],
)
def test_bad_values_are_clear_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_engine_config(None, [override])


def test_missing_and_malformed_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_engine_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("search: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_engine_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_engine_config(lst)


def test_parse_overrides_nests_and_parses_yaml_scalars() -> None:
    assert parse_overrides(["a.b=1", "a.c=true", "d=x y", "e=0.5"]) == {
        "a": {"b": 1, "c": True},
        "d": "x y",
        "e": 0.5,
    }


def test_exponent_floats_without_a_dot_are_numbers() -> None:
    # PyYAML reads "1e-4" as a string; a learning rate written so must still work.
    cfg = load_engine_config(None, ["search.temperature=1e-4", "resign.threshold=5e-2"])
    assert cfg.search.temperature == 1e-4 and cfg.resign.threshold == 0.05
    with pytest.raises(ConfigError, match="search.temperature: expected a number, got 'warm'"):
        load_engine_config(None, ["search.temperature=warm"])
