"""The 4-bit rounding of benchmarks/quant_probe.py (the model card's 4-bit figures rest on it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

_spec = importlib.util.spec_from_file_location(
    "quant_probe", Path(__file__).resolve().parents[2] / "benchmarks" / "quant_probe.py"
)
quant_probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quant_probe)


def test_absmax_keeps_weights_already_on_its_levels():
    scale = torch.tensor([[0.5], [0.01]])
    levels = torch.randint(-7, 8, (2, 32)).float()
    levels[:, 0] = 7  # the group's max |w| sets the scale
    w = levels * scale
    assert torch.allclose(quant_probe.fake_int4(w, 32, "absmax"), w, atol=1e-6)


@pytest.mark.parametrize("mode,levels", [("absmax", 15), ("mse", 16)])
def test_each_group_uses_at_most_sixteen_values(mode, levels):
    w = torch.randn(8, 128)
    q = quant_probe.fake_int4(w, 32, mode)
    assert q.shape == w.shape and q.dtype == w.dtype
    for row in q.view(8, 4, 32).reshape(-1, 32):
        assert len(torch.unique(row)) <= levels


def test_mse_search_is_no_worse_than_its_unclipped_scale():
    torch.manual_seed(0)
    w = torch.randn(16, 64) * torch.rand(16, 1)
    w[0, 0] = 8.0  # an outlier: clipping it pays
    q = quant_probe.fake_int4(w, 64, "mse")
    s = w.abs().amax(1, keepdim=True) / 7.5
    unclipped = torch.round(w / s).clamp(-8, 7) * s
    assert ((q - w) ** 2).sum(1).le(((unclipped - w) ** 2).sum(1) + 1e-6).all()
    assert ((q - w) ** 2).sum() < ((unclipped - w) ** 2).sum()


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown mode"):
        quant_probe.fake_int4(torch.randn(2, 32), 32, "nf4")


@pytest.mark.parametrize("bad", ["nf4:32", "mse:0", "mse:x", "absmax"])
def test_bad_variants_stop_before_any_model_is_loaded(bad, capsys):
    import argparse

    with pytest.raises(SystemExit):
        quant_probe.parse_variants(f"mse:32,{bad}", argparse.ArgumentParser(prog="quant_probe"))
    assert repr(bad) in capsys.readouterr().err


def test_variants_parse_and_empty_means_none():
    import argparse

    ap = argparse.ArgumentParser()
    assert quant_probe.parse_variants("absmax:32,mse:128", ap) == [("absmax", 32), ("mse", 128)]
    assert quant_probe.parse_variants("", ap) == []
