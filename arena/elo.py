"""Elo arithmetic: score <-> Elo, intervals, LOS, and maximum-likelihood ratings.

Model: the logistic Elo curve, the expected score of a player ``d`` Elo above its
opponent is ``1 / (1 + 10 ** (-d / 400))``. A 75% score is ``-400 log10(1/0.75 - 1)``
= +190.8 Elo.

Match intervals (as cutechess-cli and fastchess compute them): the per-game score has
mean ``s`` and variance ``var = (W(1-s)^2 + D(0.5-s)^2 + L(0-s)^2) / N``; the 95%
interval of the mean score is ``s +- 1.96 sqrt(var / N)``, mapped through the Elo
curve. With opening pairs (each opening played with both colours) the pentanomial
version uses the pair score (0, 0.25, ..., 1) and ``var_pair / pairs`` instead, which
accounts for the correlation within a pair.

LOS, the likelihood of superiority: ``Phi((W - L) / sqrt(W + L))`` (draws carry no
information about which side is stronger).

Ratings by maximum likelihood treat each game's score ``x`` (1, 0.5, 0) as
``x`` wins and ``1 - x`` losses (draws as half a win and half a loss, as Ordo does):
log-likelihood ``sum x log p + (1 - x) log(1 - p)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

Z95 = 1.959963984540054  # two-sided 95% normal quantile
ELO_K = math.log(10) / 400.0  # d p / d elo = ELO_K p (1 - p)
LL_DROP_95 = 1.920729410347062  # chi2(1) 95% quantile / 2: the profile-likelihood interval


def expected_score(diff: float) -> float:
    """Expected score of a player ``diff`` Elo above the opponent."""
    return 1.0 / (1.0 + 10.0 ** (-diff / 400.0))


def score_to_elo(score: float) -> float:
    """Elo difference that gives ``score`` (-inf at 0, +inf at 1)."""
    if score <= 0.0:
        return -math.inf
    if score >= 1.0:
        return math.inf
    return -400.0 * math.log10(1.0 / score - 1.0)


def normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def los(wins: int, losses: int) -> float | None:
    """Likelihood of superiority; None with no decisive game."""
    if wins + losses == 0:
        return None
    return normal_cdf((wins - losses) / math.sqrt(wins + losses))


def _finite(x: float) -> float | None:
    return x + 0.0 if math.isfinite(x) else None  # + 0.0: no "-0.0" in reports


@dataclasses.dataclass(frozen=True)
class EloEstimate:
    """An Elo difference with its 95% interval; None where infinite (a 0% or 100% score)."""

    diff: float | None
    lower: float | None
    upper: float | None
    score: float
    games: int
    method: str

    @property
    def error(self) -> float | None:
        """Half the interval width, the ``+-`` figure tournament managers print."""
        if self.lower is None or self.upper is None:
            return None
        return (self.upper - self.lower) / 2.0

    def to_dict(self) -> dict[str, float | int | str | None]:
        r = lambda v: None if v is None else round(v, 2) + 0.0  # noqa: E731
        return {
            "diff": r(self.diff),
            "lower": r(self.lower),
            "upper": r(self.upper),
            "error": r(self.error),
            "score": round(self.score, 4),
            "games": self.games,
            "confidence": 0.95,
            "method": self.method,
        }

    def text(self) -> str:
        if self.diff is None:
            return "n/a (score 0% or 100%)" if self.games else "n/a"
        err = self.error
        return f"{self.diff:+.1f} +/- {err:.1f}" if err is not None else f"{self.diff:+.1f}"


def _interval(mean: float, var_of_mean: float, games: int, method: str) -> EloEstimate:
    half = Z95 * math.sqrt(max(var_of_mean, 0.0))
    lo = min(max(mean - half, 0.0), 1.0)
    hi = min(max(mean + half, 0.0), 1.0)
    return EloEstimate(
        _finite(score_to_elo(mean)), _finite(score_to_elo(lo)), _finite(score_to_elo(hi)), mean, games, method
    )


def elo_wdl(wins: int, draws: int, losses: int) -> EloEstimate:
    """Elo difference and 95% interval from wins, draws and losses (trinomial)."""
    n = wins + draws + losses
    if n == 0:
        return EloEstimate(None, None, None, 0.5, 0, "trinomial")
    s = (wins + 0.5 * draws) / n
    var = (wins * (1 - s) ** 2 + draws * (0.5 - s) ** 2 + losses * s**2) / n
    return _interval(s, var / n, n, "trinomial")


def elo_pentanomial(counts: Sequence[int]) -> EloEstimate:
    """Elo from opening pairs: counts of pair scores 0, 0.5, 1, 1.5, 2 (out of 2)."""
    if len(counts) != 5:
        raise ValueError("pentanomial counts: five numbers (pair scores 0, 0.5, 1, 1.5, 2)")
    n = sum(counts)
    if n == 0:
        return EloEstimate(None, None, None, 0.5, 0, "pentanomial")
    values = (0.0, 0.25, 0.5, 0.75, 1.0)
    s = sum(c * v for c, v in zip(counts, values, strict=True)) / n
    var = sum(c * (v - s) ** 2 for c, v in zip(counts, values, strict=True)) / n
    return _interval(s, var / n, 2 * n, "pentanomial")


# -- maximum likelihood ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AbsoluteFit:
    """One engine's Elo from games against opponents of known Elo."""

    elo: float | None  # None when the likelihood has no maximum (all wins / all losses)
    stderr: float | None  # from the Fisher information at the maximum
    lower: float | None  # 95% profile-likelihood interval
    upper: float | None
    games: int
    score: float

    def to_dict(self) -> dict[str, float | int | None]:
        r = lambda v: None if v is None else round(v, 1)  # noqa: E731
        return {
            "elo": r(self.elo),
            "stderr": r(self.stderr),
            "lower": r(self.lower),
            "upper": r(self.upper),
            "games": self.games,
            "score": round(self.score, 4),
        }


def _loglik(r: float, games: Sequence[tuple[float, float]]) -> float:
    total = 0.0
    for opp, x in games:
        p = expected_score(r - opp)
        p = min(max(p, 1e-300), 1 - 1e-16)
        total += x * math.log(p) + (1 - x) * math.log1p(-p)
    return total


def _gradient(r: float, games: Sequence[tuple[float, float]]) -> float:
    return sum(ELO_K * (x - expected_score(r - opp)) for opp, x in games)


def _bisect(fn: Callable[[float], float], lo: float, hi: float, iters: int = 200) -> float:
    """A root of ``fn`` on ``[lo, hi]``, where ``fn`` changes sign once."""
    flo = fn(lo)
    for _ in range(iters):
        mid = (lo + hi) / 2.0
        fm = fn(mid)
        if (fm > 0) == (flo > 0):
            lo, flo = mid, fm
        else:
            hi = mid
        if hi - lo < 1e-7:
            break
    return (lo + hi) / 2.0


def fit_absolute(games: Sequence[tuple[float, float]], *, span: float = 4000.0) -> AbsoluteFit:
    """Maximum-likelihood Elo of one player from ``(opponent_elo, score)`` per game."""
    n = len(games)
    if n == 0:
        return AbsoluteFit(None, None, None, None, 0, 0.0)
    score = sum(x for _, x in games) / n
    opps = [o for o, _ in games]
    lo_r, hi_r = min(opps) - span, max(opps) + span
    total = sum(x for _, x in games)
    elo: float | None
    if 0 < total < n:
        elo = _bisect(lambda r: _gradient(r, games), lo_r, hi_r)
        ll_max = _loglik(elo, games)
        info = sum(ELO_K**2 * expected_score(elo - o) * (1 - expected_score(elo - o)) for o in opps)
        stderr: float | None = 1.0 / math.sqrt(info)
        target = ll_max - LL_DROP_95
        lower = _bisect(lambda r: _loglik(r, games) - target, lo_r, elo)
        upper = _bisect(lambda r: _loglik(r, games) - target, elo, hi_r)
        return AbsoluteFit(elo, stderr, lower, upper, n, score)
    # All losses (or all wins): the likelihood rises without end towards -inf (+inf).
    # The profile interval is still one-sided and finite.
    target = -LL_DROP_95  # the supremum of the log-likelihood is 0
    if total == 0:
        upper = _bisect(lambda r: _loglik(r, games) - target, lo_r, hi_r)
        return AbsoluteFit(None, None, None, upper, n, score)
    lower = _bisect(lambda r: _loglik(r, games) - target, lo_r, hi_r)
    return AbsoluteFit(None, None, lower, None, n, score)


@dataclasses.dataclass(frozen=True)
class RatingsFit:
    """Ratings of several players from games among them."""

    ratings: list[float]
    stderr: list[float | None]  # relative to the anchor (whose error is 0)
    anchor: int
    anchor_elo: float
    prior_draws: float
    converged: bool


def fit_ratings(
    n_players: int,
    games: Sequence[tuple[int, int, float]],
    *,
    anchor: int = 0,
    anchor_elo: float = 0.0,
    prior_draws: float = 0.0,
    max_iter: int = 100,
) -> RatingsFit:
    """Maximum-likelihood ratings from ``(player_a, player_b, score_of_a)`` per game.

    One player (``anchor``) is fixed at ``anchor_elo``; errors come from the inverse
    Fisher information of the others. ``prior_draws`` adds that many virtual draws
    to every pair that met, which keeps ratings finite when a player won or lost
    every game (without it they diverge).
    """
    import numpy as np

    if not 0 <= anchor < n_players:
        raise ValueError(f"anchor {anchor} is not a player index")
    pairs: dict[tuple[int, int], list[float]] = {}
    for a, b, x in games:
        if a == b:
            raise ValueError("a player cannot play itself")
        key = (a, b) if a < b else (b, a)
        sa = x if a < b else 1.0 - x
        acc = pairs.setdefault(key, [0.0, 0.0])  # [score of the lower index, games]
        acc[0] += sa
        acc[1] += 1
    if prior_draws > 0:
        for acc in pairs.values():
            acc[0] += 0.5 * prior_draws
            acc[1] += prior_draws
    free = [i for i in range(n_players) if i != anchor]
    pos = {p: k for k, p in enumerate(free)}
    r = np.zeros(n_players)
    converged = False
    for _ in range(max_iter):
        grad = np.zeros(len(free))
        hess = np.zeros((len(free), len(free)))
        for (a, b), (s, g) in pairs.items():
            p = expected_score(r[a] - r[b])
            da = ELO_K * (s - g * p)  # d loglik / d r_a
            w = ELO_K**2 * g * p * (1 - p)
            if a in pos:
                grad[pos[a]] += da
                hess[pos[a], pos[a]] += w
            if b in pos:
                grad[pos[b]] -= da
                hess[pos[b], pos[b]] += w
            if a in pos and b in pos:
                hess[pos[a], pos[b]] -= w
                hess[pos[b], pos[a]] -= w
        try:
            step = np.linalg.solve(hess + 1e-12 * np.eye(len(free)), grad)
        except np.linalg.LinAlgError:
            break
        step = np.clip(step, -400.0, 400.0)  # Newton from far away overshoots
        for k, p_idx in enumerate(free):
            r[p_idx] += step[k]
        if float(np.max(np.abs(step))) < 1e-6 if len(free) else True:
            converged = True
            break
    stderr: list[float | None] = [None] * n_players
    stderr[anchor] = 0.0
    if free:
        try:
            cov = np.linalg.inv(hess)
            for k, p_idx in enumerate(free):
                v = float(cov[k, k])
                stderr[p_idx] = math.sqrt(v) if v > 0 and math.isfinite(v) else None
        except np.linalg.LinAlgError:
            pass
    ratings = [float(v) + anchor_elo for v in r]
    if any(abs(v - anchor_elo) > 3000 for v in ratings):
        converged = False  # drifting off: some player won or lost every game
    return RatingsFit(ratings, stderr, anchor, anchor_elo, prior_draws, converged)
