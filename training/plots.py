"""Training curves as PNG files, drawn from the JSONL log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_log(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def plot_curves(log_path: str | Path, out_dir: str | Path) -> list[Path]:
    """``loss.png`` (training and validation loss), ``accuracy.png`` (exact-move accuracy)
    and ``legal_rate.png`` (legal-move rate of free generation), against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = read_log(log_path)
    out = Path(out_dir)
    written: list[Path] = []

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(e["step"], e[key]) for e in entries if key in e and e[key] is not None]
        return [s for s, _ in pts], [v for _, v in pts]

    specs = [
        ("loss.png", "loss (cross-entropy per completion token)", [("loss", "train"), ("eval_loss", "validation")], False),
        ("accuracy.png", "exact-move accuracy (greedy generation)", [("exact_move_accuracy", "validation positions")], True),
        ("legal_rate.png", "legal-move rate (greedy generation)", [("legal_rate", "validation positions")], True),
    ]
    for name, title, keys, unit in specs:
        fig, ax = plt.subplots(figsize=(7, 4))
        drawn = False
        for key, label in keys:
            x, y = series(key)
            if x:
                ax.plot(x, y, marker="o" if len(x) < 30 else None, label=label)
                drawn = True
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        if unit:
            ax.set_ylim(0, 1)
        if drawn:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    return written
