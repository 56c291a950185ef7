"""The comparison report's figures (matplotlib, PNG): precision vs recall, the sampling sweeps
(FID vs NFE) and the training-loss curves from MLflow."""

from __future__ import annotations

import io
from pathlib import Path
from genpipe import tracking
from genpipe.results import EvaluationResult, Quality, SweepRow
from genpipe.storage import atomic_write_bytes

MARKERS = "osD^vP*Xh<>p"
LOSS_COLUMNS = 3  # loss panels per row: the figure stays as wide as a page


def loss_histories(results: dict[str, EvaluationResult]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Training-loss curves from each family's MLflow run (empty where unavailable)."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    try:
        client = tracking.client()
    except Exception:  # noqa: BLE001 - the report still renders without curves
        return out
    for family, r in results.items():
        run_id = r.mlflow_run_id
        if not run_id:
            continue
        curves = {}
        try:
            keys = [k for k in client.get_run(run_id).data.metrics if "loss" in k and not k.startswith("eval/")]
            for key in sorted(keys):
                curves[key] = [(h.step, h.value) for h in client.get_metric_history(run_id, key)]
        except Exception:  # noqa: BLE001 - a missing run leaves that family's curve out
            continue
        out[family] = curves
    return out


def write_plots(results: dict[str, EvaluationResult], real: Quality, losses: dict, folder: Path, pr_k: int) -> list[Path]:
    """Every figure of the report into ``folder``; the paths written."""
    import matplotlib  # deferred: only the report draws, and importing it costs a second

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no GUI backend is looked for

    paths = []

    def save(fig, name):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        atomic_write_bytes(folder / name, buf.getvalue())
        paths.append(folder / name)

    save(_precision_recall(plt, results, real, pr_k), "precision_recall.png")
    sweeps = {f: r.sweep for f, r in results.items() if r.sweep}
    if sweeps:
        save(_sweep(plt, sweeps), "fid_vs_nfe.png")
    losses = {f: c for f, c in losses.items() if c}  # a family fitted without a loss (by EM) has no curve
    if losses:
        save(_losses(plt, losses), "training_losses.png")
    return paths


def _precision_recall(plt, results: dict[str, EvaluationResult], real: Quality, pr_k: int):
    """One marker and colour per family, named in the legend (labels beside close points overlap)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (family, r) in enumerate(results.items()):
        q = r.quality
        ax.scatter(q.recall, q.precision, s=55, marker=MARKERS[i % len(MARKERS)], label=family, alpha=0.85)
    ax.scatter(real.recall, real.precision, marker="*", s=160, c="k", label="real (test split)")
    ax.set(xlabel="recall (diversity)", ylabel="precision (fidelity)", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
           title=f"Precision vs recall (k={pr_k})")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return fig


def _sweep(plt, sweeps: dict[str, list[SweepRow]]):
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for family, rows in sweeps.items():
        for series in dict.fromkeys(r.sampler for r in rows):
            pts = sorted((r.nfe, r.fid) for r in rows if r.sampler == series)
            ax.plot(*zip(*pts), marker="o", label=f"{family} {series}")
    nfes = sorted({r.nfe for rows in sweeps.values() for r in rows})
    ax.set(xscale="log", xlabel="network evaluations per image (NFE)", ylabel="FID (lower is better)",
           title="Sampler sweep: FID vs NFE")
    ax.set_xticks(nfes, [str(n) for n in nfes])
    ax.minorticks_off()
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def _losses(plt, losses: dict[str, dict[str, list[tuple[int, float]]]]):
    """One panel per family, at most ``LOSS_COLUMNS`` to a row."""
    n = len(losses)
    cols = min(n, LOSS_COLUMNS)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (family, curves) in zip(axes.flat, losses.items()):
        for key, pts in curves.items():
            if pts:
                ax.plot(*zip(*pts), label=key, lw=1)
        ax.set(title=family, xlabel="step")
        if curves:
            ax.legend(fontsize=6)
    fig.tight_layout()
    return fig
