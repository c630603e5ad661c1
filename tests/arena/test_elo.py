"""Elo arithmetic, intervals, LOS, maximum-likelihood fits and the SPRT, against known
values and reference computations with scipy."""

from __future__ import annotations

import math
import random

import pytest

from arena.elo import (
    elo_pentanomial,
    elo_wdl,
    expected_score,
    fit_absolute,
    fit_ratings,
    los,
    score_to_elo,
)
from arena.sprt import Sprt, llr_pentanomial, llr_trinomial, parse_sprt

stats = pytest.importorskip("scipy.stats")
optimize = pytest.importorskip("scipy.optimize")


def test_a_75_percent_score_is_plus_191_elo() -> None:
    assert score_to_elo(0.75) == pytest.approx(190.85, abs=0.01)
    assert round(score_to_elo(0.75)) == 191
    assert score_to_elo(0.5) == 0.0
    assert score_to_elo(0.25) == pytest.approx(-190.85, abs=0.01)
    assert expected_score(190.85) == pytest.approx(0.75, abs=1e-4)
    assert score_to_elo(1.0) == math.inf and score_to_elo(0.0) == -math.inf


def test_wdl_interval_matches_a_reference_normal_interval() -> None:
    w, d, lo = 30, 40, 10  # score 62.5%
    est = elo_wdl(w, d, lo)
    n = w + d + lo
    outcomes = [1.0] * w + [0.5] * d + [0.0] * lo
    s = sum(outcomes) / n
    sd = stats.tstd(outcomes) * math.sqrt((n - 1) / n)  # population sd of the per-game score
    lo_s, hi_s = stats.norm.interval(0.95, loc=s, scale=sd / math.sqrt(n))
    assert est.score == pytest.approx(0.625)
    assert est.diff == pytest.approx(-400 * math.log10(1 / 0.625 - 1), abs=0.01)
    assert est.lower == pytest.approx(-400 * math.log10(1 / lo_s - 1), abs=0.01)
    assert est.upper == pytest.approx(-400 * math.log10(1 / hi_s - 1), abs=0.01)
    assert est.lower < est.diff < est.upper


def test_interval_is_open_ended_for_a_perfect_score() -> None:
    est = elo_wdl(10, 0, 0)
    assert est.diff is None and est.upper is None
    assert est.to_dict()["diff"] is None  # JSON has no infinity


def test_los_matches_the_normal_cdf() -> None:
    assert los(30, 10) == pytest.approx(stats.norm.cdf((30 - 10) / math.sqrt(40)))
    assert los(5, 5) == pytest.approx(0.5)
    assert los(0, 0) is None


def test_pentanomial_interval_uses_pair_scores() -> None:
    counts = [2, 5, 20, 8, 5]  # pairs scoring 0, 0.5, 1, 1.5, 2 points
    est = elo_pentanomial(counts)
    values = [0.0] * 2 + [0.25] * 5 + [0.5] * 20 + [0.75] * 8 + [1.0] * 5
    s = sum(values) / len(values)
    sd = math.sqrt(sum((v - s) ** 2 for v in values) / len(values))
    lo_s, hi_s = stats.norm.interval(0.95, loc=s, scale=sd / math.sqrt(len(values)))
    assert est.games == 80
    assert est.diff == pytest.approx(score_to_elo(s), abs=0.01)
    assert est.lower == pytest.approx(score_to_elo(lo_s), abs=0.01)
    assert est.upper == pytest.approx(score_to_elo(hi_s), abs=0.01)


def test_absolute_fit_single_opponent_has_the_closed_form_answer() -> None:
    games = [(1500.0, 1.0)] * 3 + [(1500.0, 0.0)]  # 75% against 1500
    fit = fit_absolute(games)
    assert fit.elo == pytest.approx(1500 + 190.85, abs=0.05)
    # Fisher information of 4 games at p = 0.75.
    k = math.log(10) / 400
    assert fit.stderr == pytest.approx(1 / math.sqrt(4 * k * k * 0.75 * 0.25), rel=1e-4)
    assert fit.lower < fit.elo < fit.upper


def test_absolute_fit_symmetric_results_center_on_the_middle() -> None:
    games = [(1300.0, 1.0), (1700.0, 0.0), (1500.0, 0.5), (1500.0, 0.5)]
    fit = fit_absolute(games)
    assert fit.elo == pytest.approx(1500.0, abs=0.01)
    assert fit.upper - 1500 == pytest.approx(1500 - fit.lower, abs=0.1)


def test_absolute_fit_recovers_a_simulated_engine() -> None:
    rng = random.Random(7)
    true = 1620.0
    games = []
    for opp in (1350.0, 1500.0, 1700.0, 2000.0):
        for _ in range(400):
            p = expected_score(true - opp)
            games.append((opp, 1.0 if rng.random() < p else 0.0))
    fit = fit_absolute(games)
    assert abs(fit.elo - true) < 3 * fit.stderr
    assert fit.lower < true < fit.upper
    assert 10 < fit.stderr < 25  # 1600 games: about 15 Elo


def test_absolute_fit_of_an_engine_that_lost_every_game_is_an_upper_bound() -> None:
    games = [(1350.0, 0.0)] * 6 + [(1500.0, 0.0)] * 6
    fit = fit_absolute(games)
    assert fit.elo is None and fit.lower is None
    assert fit.upper is not None and fit.upper < 1350
    # At the bound, the log-likelihood is 1.92 below its supremum (0).
    ll = sum(math.log(1 - expected_score(fit.upper - o)) for o, _ in games)
    assert ll == pytest.approx(-1.9207, abs=1e-3)


def test_ratings_fit_recovers_known_ratings_from_expected_scores() -> None:
    true = [0.0, 150.0, -80.0, 300.0]
    games = []
    for a in range(4):
        for b in range(a + 1, 4):
            # Fractional "scores" equal to the expectations: the MLE is exactly `true`.
            for _ in range(10):
                games.append((a, b, expected_score(true[a] - true[b])))
    fit = fit_ratings(4, games, anchor=0, anchor_elo=0.0)
    assert fit.converged
    assert fit.ratings == pytest.approx(true, abs=0.01)
    assert fit.stderr[0] == 0.0 and all(se is not None and se > 0 for se in fit.stderr[1:])


def test_ratings_fit_flags_a_player_that_lost_everything() -> None:
    games = [(0, 1, 1.0)] * 4 + [(0, 2, 0.5)] * 4 + [(1, 2, 0.0)] * 4
    assert not fit_ratings(3, games).converged
    regular = fit_ratings(3, games, prior_draws=1.0)
    assert regular.converged
    assert regular.ratings[1] < regular.ratings[0] - 100


def _reference_llr(counts: list[float], scores: list[float], elo0: float, elo1: float) -> float:
    """LLR by direct constrained maximisation with scipy (the definition, not the shortcut)."""
    total = sum(counts)
    probs = [c / total for c in counts]

    def best(s_target: float) -> float:
        def neg(x: list[float]) -> float:
            return -sum(c * math.log(max(p, 1e-300)) for c, p in zip(counts, x, strict=True))

        cons = [
            {"type": "eq", "fun": lambda x: sum(x) - 1},
            {"type": "eq", "fun": lambda x: sum(a * p for a, p in zip(scores, x, strict=True)) - s_target},
        ]
        res = optimize.minimize(
            neg,
            probs,
            constraints=cons,
            bounds=[(1e-9, 1)] * len(counts),
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500},
        )
        return -res.fun

    return best(expected_score(elo1)) - best(expected_score(elo0))


def test_sprt_llr_trinomial_matches_the_constrained_likelihood_definition() -> None:
    w, d, lo = 120, 200, 95
    ours = llr_trinomial(w, d, lo, 0.0, 10.0)
    ref = _reference_llr([lo, d, w], [0.0, 0.5, 1.0], 0.0, 10.0)
    assert ours == pytest.approx(ref, abs=1e-3)


def test_sprt_llr_pentanomial_matches_the_definition() -> None:
    counts = [10, 40, 90, 55, 15]
    ours = llr_pentanomial(counts, -2.0, 3.0)
    ref = _reference_llr(counts, [0.0, 0.25, 0.5, 0.75, 1.0], -2.0, 3.0)
    assert ours == pytest.approx(ref, abs=1e-3)


def test_sprt_bounds_and_decisions() -> None:
    sprt = parse_sprt("elo0=0 elo1=10 alpha=0.05 beta=0.05")
    assert sprt.upper == pytest.approx(math.log(0.95 / 0.05))
    assert sprt.lower == pytest.approx(math.log(0.05 / 0.95))
    assert sprt.decision(sprt.llr(400, 100, 100)) == "H1"  # far stronger: accept elo1
    assert sprt.decision(sprt.llr(100, 100, 400)) == "H0"
    assert sprt.decision(sprt.llr(3, 2, 3)) is None
    with pytest.raises(ValueError, match="elo0"):
        Sprt(elo0=5, elo1=0)
    with pytest.raises(ValueError, match="unknown key"):
        parse_sprt("elo2=3")


def test_pentanomial_elo_and_llr_agree_with_fastchess() -> None:
    # fastchess 1.8.2 (logistic SPRT [0, 10], alpha = beta = 0.05) printed for a 16-game
    # match with Ptnml(0-2) [1, 0, 4, 0, 3]: "Elo: 88.74 +/- 190.27", "LLR: 0.11 (-2.94, 2.94)".
    est = elo_pentanomial([1, 0, 4, 0, 3])
    assert est.diff == pytest.approx(88.74, abs=0.005)
    assert est.error == pytest.approx(190.27, abs=0.005)
    sprt = Sprt(elo0=0, elo1=10, alpha=0.05, beta=0.05)
    assert round(sprt.llr(10, 0, 6, [1, 0, 4, 0, 3]), 2) == 0.11
    assert round(sprt.upper, 2) == 2.94 and round(sprt.lower, 2) == -2.94
