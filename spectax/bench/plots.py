"""The PNGs `spectax bench` writes next to its JSON (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PLOTS = ("speedup_tau.png", "by_category.png", "acceptance.png", "tokens_per_s_by_batch.png", "verify_cost.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(run: dict) -> str:
    return f"batch {run['batch']}, T={run['temperature']:g}"


def write_plots(out_dir: Path, result: dict) -> list[Path]:
    """Writes the PLOTS into out_dir from a result of the documented schema; returns their paths. verify_cost.png
    only when the result holds a c(N) measurement."""
    plt = _pyplot()
    written = []
    runs = result["runs"]

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(out_dir / name)

    # speedup and tau per method, one group of bars per run
    names = list(dict.fromkeys(n for run in runs for n in run["methods"]))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(names) * 2), 4))
    width = 0.8 / max(len(runs), 1)
    for i, run in enumerate(runs):
        x = np.arange(len(names)) + i * width
        m = run["methods"]
        axes[0].bar(x, [m[n]["speedup"] if n in m else 0 for n in names], width, label=_label(run))
        axes[1].bar(x, [m[n]["tau"] if n in m else 0 for n in names], width, label=_label(run))
    for ax, title in zip(axes, ("speedup over plain (end to end)", "tau (tokens per target call)")):
        ax.set_xticks(np.arange(len(names)) + width * (len(runs) - 1) / 2, names, rotation=35, ha="right")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_title(title)
        ax.legend(fontsize=7)
    save(fig, "speedup_tau.png")

    # speedup per category (the first run with per-category figures)
    run = next((r for r in runs if any(m["by_category"] for m in r["methods"].values())), runs[0])
    cats = sorted({c for m in run["methods"].values() for c in m["by_category"]})
    grid = np.array([[run["methods"][n]["by_category"].get(c, {}).get("speedup_median", np.nan) for c in cats]
                     for n in run["methods"]]) if cats else np.zeros((len(run["methods"]), 0))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(cats) + 3), 0.45 * len(run["methods"]) + 2))
    image = ax.imshow(grid if grid.size else np.zeros((1, 1)), cmap="RdYlGn", vmin=0.5, vmax=1.5, aspect="auto")
    ax.set_yticks(range(len(run["methods"])), list(run["methods"]))
    ax.set_xticks(range(len(cats)), cats, rotation=35, ha="right")
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="speedup (median per prompt)")
    ax.set_title(f"speedup by Spec-Bench category ({_label(run)})")
    save(fig, "by_category.png")

    # acceptance per depth
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        for n, m in run["methods"].items():
            if m["acceptance_per_depth"]:
                d = np.arange(1, len(m["acceptance_per_depth"]) + 1)
                ax.plot(d, m["acceptance_per_depth"], marker="o", label=f"{n} ({_label(run)})")
    ax.set_xlabel("tree depth")
    ax.set_ylabel("P(accept at depth d | reached d - 1)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    save(fig, "acceptance.png")

    # end-to-end tokens/s against batch size, per method and temperature
    fig, ax = plt.subplots(figsize=(6, 4))
    for temperature in sorted({r["temperature"] for r in runs}):
        same_t = sorted((r for r in runs if r["temperature"] == temperature), key=lambda r: r["batch"])
        for n in names:
            pts = [(r["batch"], r["methods"][n]["e2e_tokens_per_s"]) for r in same_t if n in r["methods"]]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{n}, T={temperature:g}")
    ax.set_xlabel("batch size")
    ax.set_ylabel("tokens / s (end to end)")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)
    save(fig, "tokens_per_s_by_batch.png")

    cost = result.get("verify_cost")
    if cost:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(cost["nodes"], cost["cost"], marker="o")
        ax.set_xlabel("draft nodes N")
        ax.set_ylabel("c(N) = verify step / plain step")
        ax.set_title(f"verification cost, batch {cost['batch']} ({cost['backend']})")
        save(fig, "verify_cost.png")
    return written
