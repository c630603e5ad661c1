"""PNG plots of ladder and tournament results (matplotlib, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from arena.elo import Z95, expected_score


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _wilson(p: float, n: int) -> tuple[float, float]:
    """Wilson 95% interval of a score fraction (honest at 0% and 100%, unlike the normal one)."""
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def ladder_plot(report: dict[str, Any], path: str | Path) -> Path:
    """Score against opponent Elo, with 95% error bars and the fitted logistic curve."""
    plt = _pyplot()
    levels = [lv for lv in report["levels"] if lv["games"]]
    xs = [lv["elo"] for lv in levels]
    ys = [lv["score"] for lv in levels]
    bounds = [_wilson(lv["score"], lv["games"]) for lv in levels]
    errs = [
        [max(0.0, y - lo) for y, (lo, _) in zip(ys, bounds, strict=True)],
        [max(0.0, hi - y) for y, (_, hi) in zip(ys, bounds, strict=True)],
    ]
    fit = report["fit"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.errorbar(xs, ys, yerr=errs, fmt="o", color="C0", capsize=4, label="score per level (95% interval)")
    for lv in levels:
        anchor = bool(lv.get("anchor"))
        ax.annotate(
            f"anchor {lv['name']}\n{lv['games']} g" if anchor else f"{lv['games']} g",
            (lv["elo"], lv["score"]),
            textcoords="offset points",
            xytext=(-6, -26) if anchor else (6, 6),
            ha="right" if anchor else "left",
            fontsize=8,
        )
    lo_x = min(xs + [fit["elo"] or xs[0]]) - 300 if xs else 1000
    hi_x = max(xs + [fit["elo"] or xs[-1]]) + 300 if xs else 3000
    grid = [lo_x + (hi_x - lo_x) * i / 200 for i in range(201)]
    if fit["elo"] is not None:
        r = fit["elo"]
        ax.plot(grid, [expected_score(r - x) for x in grid], color="C1", label=f"fit: Elo {r:.0f}")
        if fit["lower"] is not None and fit["upper"] is not None:
            ax.fill_between(
                grid,
                [expected_score(fit["lower"] - x) for x in grid],
                [expected_score(fit["upper"] - x) for x in grid],
                color="C1",
                alpha=0.2,
                label=f"95%: {fit['lower']:.0f} .. {fit['upper']:.0f}",
            )
    elif fit["upper"] is not None:
        ax.plot(
            grid,
            [expected_score(fit["upper"] - x) for x in grid],
            "--",
            color="C3",
            label=f"no finite fit (no points scored): Elo < {fit['upper']:.0f} (95%)",
        )
    elif fit["lower"] is not None:
        ax.plot(
            grid,
            [expected_score(fit["lower"] - x) for x in grid],
            "--",
            color="C2",
            label=f"no finite fit (every game won): Elo > {fit['lower']:.0f} (95%)",
        )
    ax.set_xlabel("opponent Elo (Stockfish UCI_Elo)")
    ax.set_ylabel(f"score of {report['engine']['name']}")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(
        f"Ladder: {report['engine']['name']} ({report['games']} games, {report['time_control']})", fontsize=10
    )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def ratings_plot(report: dict[str, Any], path: str | Path) -> Path:
    """Tournament ratings with 95% error bars; by checkpoint step when the engines are checkpoints."""
    plt = _pyplot()
    rows = report["ratings"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    steps = [r.get("step") for r in rows]
    if all(s is not None for s in steps) and rows:
        ordered = sorted(rows, key=lambda r: r["step"])
        xs = [r["step"] for r in ordered]
        ys = [r["elo"] for r in ordered]
        errs = [r["error"] or 0.0 for r in ordered]
        ax.errorbar(xs, ys, yerr=errs, fmt="o-", capsize=4)
        ax.set_xlabel("training step")
    else:
        ordered = sorted(rows, key=lambda r: r["elo"])
        ys = [r["elo"] for r in ordered]
        errs = [r["error"] or 0.0 for r in ordered]
        ax.errorbar(range(len(ordered)), ys, yerr=errs, fmt="o", capsize=4)
        ax.set_xticks(range(len(ordered)))
        ax.set_xticklabels([r["name"] for r in ordered], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"Elo (anchor: {report['anchor']['name']} = {report['anchor']['elo']:g})")
    ax.grid(alpha=0.3)
    ax.set_title(f"Tournament ratings, 95% intervals ({report['games']} games)", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
