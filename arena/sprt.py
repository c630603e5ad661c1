"""Sequential probability ratio test for two engines (the GSPRT of fishtest and fastchess).

H0: the Elo difference is ``elo0``; H1: it is ``elo1`` (logistic Elo). After each
game the log-likelihood ratio ``LLR = N * mean(log p1 - log p0)`` is computed, where
``p0`` and ``p1`` are the maximum-likelihood distributions of the game outcomes
(trinomial: loss/draw/win; pentanomial: the five pair scores) whose expected score
is ``s0 = E(elo0)`` and ``s1 = E(elo1)`` (Van den Bergh, "Comparing the
approximations for the generalized log likelihood ratio of a multinomial
distribution", Proposition 1.1; the same computation as fishtest's ``LLR_logistic``
and fastchess's ``getLLR_logistic``). Empty outcome classes count as 0.001, as in
fastchess. The test stops when ``LLR >= log((1 - beta) / alpha)`` (accept H1) or
``LLR <= log(beta / (1 - alpha))`` (accept H0).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from arena.elo import expected_score


def _regularize(count: float) -> float:
    return count if count > 0 else 1e-3


def _mle(scores: Sequence[float], probs: Sequence[float], s: float) -> list[float]:
    """The distribution closest (in KL) to ``probs`` with expected score ``s``."""
    # Solve sum p_i (a_i - s) / (1 + theta (a_i - s)) = 0 for theta on the interval
    # where every 1 + theta (a_i - s) > 0; the function decreases in theta.
    lo = -1.0 / (max(scores) - s)
    hi = -1.0 / (min(scores) - s)

    def f(theta: float) -> float:
        return sum(p * (a - s) / (1.0 + theta * (a - s)) for a, p in zip(scores, probs, strict=True))

    eps = 1e-12
    a, b = lo + eps * (hi - lo), hi - eps * (hi - lo)
    for _ in range(200):
        mid = (a + b) / 2.0
        if f(mid) > 0:
            a = mid
        else:
            b = mid
        if b - a < 1e-14:
            break
    theta = (a + b) / 2.0
    return [p / (1.0 + theta * (x - s)) for x, p in zip(scores, probs, strict=True)]


def llr_logistic(counts: Sequence[float], scores: Sequence[float], elo0: float, elo1: float) -> float:
    """GSPRT log-likelihood ratio for outcome ``counts`` at outcome ``scores``."""
    regular = [_regularize(c) for c in counts]
    total = sum(regular)
    probs = [c / total for c in regular]
    s0, s1 = expected_score(elo0), expected_score(elo1)
    p0 = _mle(scores, probs, s0)
    p1 = _mle(scores, probs, s1)
    return total * sum(p * (math.log(b) - math.log(a)) for p, a, b in zip(probs, p0, p1, strict=True))


def llr_trinomial(wins: int, draws: int, losses: int, elo0: float, elo1: float) -> float:
    return llr_logistic([losses, draws, wins], [0.0, 0.5, 1.0], elo0, elo1)


def llr_pentanomial(counts: Sequence[int], elo0: float, elo1: float) -> float:
    """``counts``: pairs scoring 0, 0.5, 1, 1.5, 2 points (out of 2)."""
    return llr_logistic(list(counts), [0.0, 0.25, 0.5, 0.75, 1.0], elo0, elo1)


@dataclasses.dataclass(frozen=True)
class Sprt:
    elo0: float = 0.0
    elo1: float = 5.0
    alpha: float = 0.05
    beta: float = 0.05

    def __post_init__(self) -> None:
        if self.elo0 >= self.elo1:
            raise ValueError(f"SPRT: elo0 ({self.elo0}) must be below elo1 ({self.elo1})")
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if not 0 < v < 1:
                raise ValueError(f"SPRT: {name} must be between 0 and 1, not {v}")
        if self.alpha + self.beta >= 1:
            raise ValueError("SPRT: alpha + beta must be below 1")

    @property
    def lower(self) -> float:
        return math.log(self.beta / (1 - self.alpha))

    @property
    def upper(self) -> float:
        return math.log((1 - self.beta) / self.alpha)

    def llr(self, wins: int, draws: int, losses: int, penta: Sequence[int] | None = None) -> float:
        if penta is not None and sum(penta) > 0:
            return llr_pentanomial(penta, self.elo0, self.elo1)
        if wins + draws + losses == 0:
            return 0.0
        return llr_trinomial(wins, draws, losses, self.elo0, self.elo1)

    def decision(self, llr: float) -> str | None:
        """``H1`` (accept elo1), ``H0`` (accept elo0), or None (go on)."""
        if llr >= self.upper:
            return "H1"
        if llr <= self.lower:
            return "H0"
        return None

    def state(
        self, wins: int, draws: int, losses: int, penta: Sequence[int] | None = None
    ) -> dict[str, object]:
        llr = self.llr(wins, draws, losses, penta)
        return {
            "elo0": self.elo0,
            "elo1": self.elo1,
            "alpha": self.alpha,
            "beta": self.beta,
            "llr": round(llr, 4),
            "lower": round(self.lower, 4),
            "upper": round(self.upper, 4),
            "statistics": "pentanomial" if penta is not None and sum(penta) > 0 else "trinomial",
            "decision": self.decision(llr),
        }


def parse_sprt(text: str) -> Sprt:
    """``elo0=0 elo1=5 alpha=0.05 beta=0.05`` (any subset; commas or spaces)."""
    values: dict[str, float] = {}
    for word in text.replace(",", " ").split():
        if "=" not in word:
            raise ValueError(f"SPRT: {word!r} is not key=value (keys: elo0, elo1, alpha, beta)")
        key, raw = word.split("=", 1)
        if key not in ("elo0", "elo1", "alpha", "beta"):
            raise ValueError(f"SPRT: unknown key {key!r} (keys: elo0, elo1, alpha, beta)")
        try:
            values[key] = float(raw)
        except ValueError:
            raise ValueError(f"SPRT: {key}={raw!r} is not a number") from None
    return Sprt(**values)
