"""The bundled model's anchored ladders, version by version, in one plot.

Reads the committed ladder reports (``arena ladder --anchor sf-skill0-d1``, 3+0.05, on the
development machine's CPU) and draws each version's ladder Elo with its 95% profile interval:
the 125-game ladders (25 games a level) side by side, and the 250- and 500-game ones (50 and 100 a
level) where a version has one (a longer ladder extends the shorter one with ``--resume``). What it shows is how wide a ladder's interval is against the 40-50 Elo a
version gains head to head.

    .venv/bin/python benchmarks/ladder_history.py --out benchmarks/results/bundled_ladder_history.png
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PATTERN = re.compile(r"bundled_v(\d+)_ladder(\d+)?_anchored_cpu\.json")


def ladders(folder: Path) -> list[tuple[int, int, dict]]:
    """(version, games a level, fit) of every anchored ladder report in ``folder``, by version."""
    out = []
    for path in sorted(folder.glob("bundled_v*_ladder*_anchored_cpu.json")):
        m = PATTERN.fullmatch(path.name)
        if not m:
            continue
        report = json.loads(path.read_text())
        per_level = {level["games"] for level in report["levels"]}
        if len(per_level) != 1:
            sys.exit(f"{path}: levels with different game counts {sorted(per_level)}")
        out.append((int(m.group(1)), per_level.pop(), report["fit"]))
    if not out:
        sys.exit(f"no bundled_v*_ladder*_anchored_cpu.json in {folder}")
    return sorted(out, key=lambda r: (r[0], r[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--out", type=Path, default=RESULTS / "bundled_ladder_history.png")
    args = ap.parse_args()
    rows = ladders(args.results)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for per_level, dx, style in ((25, -0.2, "o"), (50, 0.0, "s"), (100, 0.2, "D")):
        pts = [(v, fit) for v, g, fit in rows if g == per_level]
        if not pts:
            continue
        xs = [v + dx for v, _ in pts]
        ys = [fit["elo"] for _, fit in pts]
        err = [[fit["elo"] - fit["lower"] for _, fit in pts], [fit["upper"] - fit["elo"] for _, fit in pts]]
        ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=4, label=f"{5 * per_level} games ({per_level} a level)")
        for v, fit in pts:
            print(f"v{v}: {5 * per_level} games: {fit['elo']:.0f} ({fit['lower']:.0f} to {fit['upper']:.0f})")
    ax.axhline(1500, color="grey", linestyle="--", linewidth=1, label="goal 1500")
    ax.set_xticks(sorted({v for v, _, _ in rows}))
    ax.set_xticklabels([f"v{v}" for v in sorted({v for v, _, _ in rows})])
    ax.set_ylabel("ladder Elo (Stockfish UCI_Elo scale), 95% interval")
    ax.set_title("Bundled model: anchored ladders at 3+0.05 on a 2-core CPU")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
