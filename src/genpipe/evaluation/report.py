"""The comparison report: every family's numbers, measured one way, side by side.

``genpipe report`` (and the last task of the pipeline flow) reads ``metrics/<family>.json``
written by the evaluate stage, scores the held-out real images with the same extractor as a
reference row, and writes

* ``reports/comparison.md`` and ``reports/comparison.html``: one row per family (and per
  sampler setting of the diffusion sweep) with quality, diversity, likelihood, sampling speed,
  training cost; a sample grid per family; the plots; and the verdict on the introductions'
  ordering, computed from the numbers;
* ``reports/figures/``: FID against NFE, precision against recall, training losses (from
  MLflow), and each family's sample grid;
* ``reports/comparison.json`` (DVC metrics: the real-data row, under the same keys as every
  ``metrics/<family>.json``, and which family leads by FID, bits/dim and speed),
  ``reports/plots/*.json`` (DVC plots) and ``reports/provenance.json`` (every row of the table
  and what produced it; linked from the report).

Every number names what produced it: dataset and checkpoint sha256, extractor id, sample
count, sampler and NFE, seed.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any

from genpipe.config import Config
from genpipe.errors import InputError
from genpipe.evaluation.report_plots import loss_histories, write_plots
from genpipe.evaluation.summary import family_summary, provenance_path, quality_summary, sampler_name
from genpipe.storage import atomic_write_bytes

QUESTIONS = (
    "Image quality: FID and KID (lower is better), precision and density, and the sample grids.",
    "Diversity / mode collapse: recall, coverage, classes covered and KL of the class histogram to the labels.",
    "Likelihood: held-out bits/dim (lower is better); exact or a bound, as marked.",
    "Sampling speed: images/s at a stated batch size and network evaluations per image (NFE).",
    "Training cost and stability: wall-clock, steps, and the training-loss curves.",
)


def _fmt(v: Any, digits: int = 3) -> str:
    """Three significant digits below 100, whole numbers from 100 on: one column, one notation."""
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.{digits}g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def plain(line: str) -> str:
    """A verdict line for a terminal: the markdown marks (``**bold**``, `` `code` ``) dropped."""
    return line.replace("**", "").replace("`", "")


def inline_html(line: str) -> str:
    """A verdict line as HTML: ``**bold**`` -> <strong>, `` `code` `` -> <code>, the rest escaped."""
    text = html.escape(line, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _read_metrics(cfg: Config) -> dict[str, dict[str, Any]]:
    out = {}
    for family in cfg.families:
        path = provenance_path(cfg.paths.metrics, family)
        if not path.exists():
            raise InputError(f"{path}: no evaluation of {family}; run `genpipe evaluate --family {family}` first")
        m = json.loads(path.read_text())
        if "quality" not in m:
            raise InputError(f"{path}: written by an older evaluate stage; run `genpipe evaluate --family {family}` again")
        out[family] = m
    ids = {m["quality"]["extractor_id"] for m in out.values()}
    if len(ids) > 1:  # numbers from different extractors never share a column
        raise InputError(f"{cfg.paths.metrics}: families were scored by different feature extractors {sorted(ids)}; "
                         "evaluate them again with one")
    return out


def real_reference(cfg: Config) -> dict[str, Any]:
    """The held-out real images (test split) through the same metrics: the floor a perfect
    generator would reach at that sample count."""
    from genpipe.evaluation.features import load_extractor
    from genpipe.evaluation.quality import load_reference, sample_quality

    extractor = load_extractor(cfg)
    ref = load_reference(cfg, extractor)
    return sample_quality(ref.test_images, ref, extractor, cfg, key="data.test_fraction (the test split)")


def _same_extractor(metrics: dict[str, dict[str, Any]], real: dict[str, Any], cfg: Config) -> None:
    """The real-data row must come from the extractor that scored the families."""
    ids = {m["quality"]["extractor_id"] for m in metrics.values()}
    if real["extractor_id"] not in ids:
        raise InputError(f"{cfg.paths.metrics}: scored by feature extractor {sorted(ids)[0]}, but "
                         f"{cfg.paths.models}/features now holds {real['extractor_id']}; "
                         "run `genpipe evaluate` again for every family")


def _rows(metrics: dict, real: dict) -> list[dict[str, Any]]:
    """The table's rows: each family's figures under the keys of ``metrics/<family>.json``
    (:func:`family_summary`), its sweep settings, and the real-data row."""
    rows = []
    for family, m in metrics.items():
        rows.append({**family_summary(m), "model": family, "sampler": sampler_name(m.get("sampling")) or "—",
                     "fid_seeds": _seed_spread(m.get("seeds")), "seed": m["quality"].get("seed"),
                     "checkpoint": m["checkpoint_sha256"][:12]})
        for r in m.get("sweep") or []:  # its own (smaller) n: marked in the row, not only in the n column
            rows.append({"model": family, "sampler": f"{sampler_name(r['sampling'])} (sweep, n={r['num_samples']})",
                         **{k: r[k] for k in ("fid", "kid", "precision", "recall", "nfe", "images_per_s", "seed")},
                         "num_samples": r["num_samples"], "checkpoint": m["checkpoint_sha256"][:12], "sweep": True})
    rows.append({"model": "real (test split)", "sampler": "—", **quality_summary(real)})
    return rows


def _seed_spread(seeds: dict | None) -> str | None:
    """FID over the training seeds as "mean ± sd (n seeds)", or None without replicates."""
    if not seeds:
        return None
    return f"{seeds['fid_mean']:.3g} ± {seeds['fid_std']:.2g} ({len(seeds['fid'])} seeds)"


COLUMNS = [  # (key, header); the keys of metrics/<family>.json (genpipe.evaluation.summary)
    ("model", "model"), ("sampler", "sampler"), ("fid", "FID ↓"), ("kid", "KID ×10³ ↓"), ("precision", "precision ↑"),
    ("recall", "recall ↑"), ("density", "density"), ("coverage", "coverage ↑"), ("inception_score", "IS ↑"),
    ("classes_covered", "classes"), ("class_kl", "class KL ↓"), ("sharpness_ratio", "sharpness / real"),
    ("nn_dist_ratio", "NN-dist ratio"), ("bits_per_dim", "bits/dim ↓"), ("images_per_s", "images/s ↑"), ("nfe", "NFE"),
    ("train_seconds", "train s"), ("train_steps", "steps"), ("fid_seeds", "FID over training seeds"),
    ("num_samples", "n"), ("checkpoint", "checkpoint"),
]
SCALE = {"kid": 1e3}  # column key -> factor the table shows it multiplied by (the files keep the raw value)


TABLE_NOTES = [
    "Sweep rows use their own sample count (n, said in the row); FID is biased upward at small n, so "
    "compare a row with rows of the same n: a sweep row with the main row's sampler scores the first n "
    "of the main row's images. The real row scores the held-out test images (small n) with the same code.",
    "KID (×10³) is the unbiased estimate of the squared MMD (polynomial kernel), averaged over subsets: "
    "for two samples of one distribution it scatters around 0 and can come out negative, as the real "
    "row's may; read a value within its subset spread (kid_std in the provenance) of 0 as 0.",
    "images/s: wall-clock, timed on the very batches that were scored (evaluate.batch_size images each), "
    "the median over the batches after the first, which warms up (with a single batch, that one); sweep "
    "rows likewise on their n images. It moves with the machine's load and threads; NFE does not.",
    "Sharpness: mean squared Laplacian relative to the real train images (< 1 blurrier). NN-dist ratio: "
    "mean nearest-train-image distance of samples over that of held-out real images (< 1: closer to the "
    "training images than unseen real ones are — copying).",
]


def _cell(row: dict[str, Any], key: str) -> str:
    """One table cell: the value, marked where its column means something else for this row."""
    value = row.get(key)
    if key in SCALE and isinstance(value, (int, float)):
        value = float(value) * SCALE[key]
    text = _fmt(value)
    if key == "bits_per_dim" and row.get("bits_per_dim_is") == "bound":
        text += " (bound)"
    return text


def verdict(metrics: dict[str, dict[str, Any]], losses: dict) -> list[str]:
    """What the numbers say about the introductions' ordering, each claim checked."""
    q = {f: m["quality"] for f, m in metrics.items()}
    lines = []
    by_fid = sorted(q, key=lambda f: q[f]["fid"])
    lines.append(f"Best image quality by FID: **{by_fid[0]}** (FID {q[by_fid[0]]['fid']:.3g}); order: "
                 + " < ".join(f"{f} {q[f]['fid']:.3g}" for f in by_fid) + ".")
    if "diffusion" in q:
        holds = by_fid[0] == "diffusion"
        lines.append(f"'Diffusion gives the best quality': **{'holds' if holds else 'does not hold'}** here "
                     f"(diffusion ranks {by_fid.index('diffusion') + 1} of {len(by_fid)} by FID).")
    speed = {f: m["speed"]["images_per_s"] for f, m in metrics.items()}
    if "gan" in q:
        faster = [f for f in speed if speed[f] > speed["gan"]]
        sp = metrics["gan"]["speed"]
        where = f"wall-clock on {sp.get('device', '?')}, {sp.get('threads', '?')} threads, batch {sp.get('batch_size', '?')}"
        lines.append(f"'GANs sample fast': GAN {speed['gan']:.0f} images/s ({where}; rates move with machine load, "
                     f"the NFE does not) at NFE {sp['nfe']}"
                     + (f"; faster: {', '.join(faster)}." if faster else ", the fastest here."))
        gl = losses.get("gan", {})
        d_curve = gl.get("discriminator/loss")
        if d_curve and len(d_curve) > 4:
            tail = [v for _, v in d_curve[len(d_curve) // 2 :]]
            mean = sum(tail) / len(tail)
            sd = (sum((v - mean) ** 2 for v in tail) / len(tail)) ** 0.5
            lines.append(f"'GANs are unstable': over the second half of training the discriminator loss has mean "
                         f"{mean:.3g} and standard deviation {sd:.3g}.")
        seeds = {f: m["seeds"] for f, m in metrics.items() if m.get("seeds")}
        if "gan" in seeds and len(seeds) > 1:
            cv = {f: s["fid_std"] / s["fid_mean"] for f, s in seeds.items()}
            order = sorted(cv, key=cv.get, reverse=True)
            lines.append("FID spread across training seeds (sd / mean): " + ", ".join(f"{f} {cv[f]:.2f}" for f in order)
                         + f" — the GAN's is **{'the largest' if order[0] == 'gan' else 'not the largest'}**.")
        elif not seeds:
            lines.append("The spread of FID across training seeds is not measured (one seed; set `stability_seeds`).")
        lines.append(f"GAN diversity: recall {q['gan']['recall']:.2f}, coverage {q['gan']['coverage']:.2f}, "
                     f"{q['gan'].get('classes_covered', '—')} classes covered, class KL {_fmt(q['gan'].get('class_kl'))}.")
    if "vae" in q:
        sharp = q["vae"]["sharpness_ratio"]
        others = sorted((q[f]["sharpness_ratio"], f) for f in q)
        lines.append(f"'VAEs are blurry': VAE sample sharpness is {sharp:.2f}× that of real images "
                     f"(rank {[f for _, f in others].index('vae') + 1} of {len(others)} from the blurriest) — "
                     f"**{'holds' if sharp < 0.8 else 'does not hold'}** (threshold 0.8).")
    ll = {f: m["likelihood"]["bits_per_dim"] for f, m in metrics.items() if m.get("likelihood")}
    if ll:
        order = sorted(ll, key=ll.get)
        kind = {f: "" if metrics[f]["likelihood"]["kind"] == "exact" else " (bound)" for f in ll}
        lines.append("Likelihood (bits/dim, lower is better; a bound is an upper bound on the true figure): "
                     + " < ".join(f"{f} {ll[f]:.3f}{kind[f]}" for f in order) + ".")
        if "gmm" in ll:
            worse = [f for f in ll if f != "gmm" and ll[f] >= ll["gmm"]]
            lines.append("Every neural likelihood beats the Gaussian mixture." if not worse
                         else f"Not beating the Gaussian mixture ({ll['gmm']:.3f}): {', '.join(worse)}.")
    return lines


def write_report(cfg: Config) -> dict[str, Any]:
    """Write reports/comparison.{md,html}, the plots, reports/comparison.json, reports/provenance.json
    and the DVC plot files."""
    metrics = _read_metrics(cfg)
    real = real_reference(cfg)
    _same_extractor(metrics, real, cfg)
    losses = loss_histories(metrics)
    folder = Path(cfg.paths.reports)
    plots = write_plots(metrics, real, losses, folder / "figures", cfg.evaluate.pr_k)
    images = _copy_figures(metrics, folder / "figures")
    rows = _rows(metrics, real)
    lines = verdict(metrics, losses)
    provenance = _provenance(metrics, cfg, rows)
    atomic_write_bytes(folder / "provenance.json", (json.dumps(provenance, indent=2) + "\n").encode())
    atomic_write_bytes(folder / "comparison.md", _markdown(rows, lines, plots, images, provenance, folder).encode())
    atomic_write_bytes(folder / "comparison.html", _html(rows, lines, plots, images, provenance, folder).encode())
    atomic_write_bytes(folder / "comparison.json", (json.dumps(_summary(metrics, real), indent=2) + "\n").encode())
    pr = [{"model": r["model"], "precision": r["precision"], "recall": r["recall"]} for r in rows if not r.get("sweep")]
    atomic_write_bytes(folder / "plots" / "precision_recall.json", (json.dumps(pr, indent=2) + "\n").encode())
    sweep = [{"model": f, "sampler": r["sampler"], "nfe": r["nfe"], "fid": r["fid"]}
             for f, m in metrics.items() for r in m.get("sweep") or []]
    atomic_write_bytes(folder / "plots" / "fid_vs_nfe.json", (json.dumps(sweep, indent=2) + "\n").encode())
    return {"markdown": (folder / "comparison.md").as_posix(), "html": (folder / "comparison.html").as_posix(),
            "rows": rows, "verdict": lines, "provenance": provenance}


def _summary(metrics: dict[str, dict[str, Any]], real: dict[str, Any]) -> dict[str, Any]:
    """``reports/comparison.json``: the real-data row under the keys of ``metrics/<family>.json``
    (one more row of ``dvc metrics show``) and which family leads."""
    out: dict[str, Any] = {"model": "real (test split)", **quality_summary(real)}
    out["best_fid"] = min(metrics, key=lambda f: metrics[f]["quality"]["fid"])
    ll = {f: m["likelihood"]["bits_per_dim"] for f, m in metrics.items() if m.get("likelihood")}
    if ll:
        out["best_bits_per_dim"] = min(ll, key=ll.get)
    out["fastest_sampling"] = max(metrics, key=lambda f: metrics[f]["speed"]["images_per_s"])
    return out


def _copy_figures(metrics: dict[str, dict[str, Any]], folder: Path) -> dict[str, list[Path]]:
    """Each family's evaluation figures (samples, and interpolation / traversal where it has a
    latent space) copied beside the report: ``<kind>-<family>.png``."""
    out: dict[str, list[Path]] = {}
    for family, m in metrics.items():
        for src in map(Path, m.get("figures") or [m["samples_png"]]):
            if src.exists():
                dst = folder / f"{src.stem}-{family}.png"
                atomic_write_bytes(dst, src.read_bytes())
                out.setdefault(family, []).append(dst)
    return out


def _provenance(metrics: dict[str, dict[str, Any]], cfg: Config, rows: list[dict[str, Any]]) -> dict[str, Any]:
    any_m = next(iter(metrics.values()))
    return {
        "dataset_sha256": any_m["dataset_sha256"],
        "extractor": any_m["extractor"],
        "num_samples": any_m["quality"]["num_samples"],  # what was scored, not today's params
        "seed": any_m["quality"].get("seed", cfg.seed),
        "families": {f: {"checkpoint_sha256": m["checkpoint_sha256"], "checkpoint_step": m.get("checkpoint_step"),
                         "mlflow_run_id": m.get("mlflow_run_id"), "sampling": m.get("sampling"), "nfe": m["speed"]["nfe"],
                         "speed": {k: m["speed"].get(k) for k in ("batch_size", "device", "threads", "timed_batches")}}
                     for f, m in metrics.items()},
        "rows": rows,
    }


def _rel(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


PROVENANCE_COLUMNS = ("family", "checkpoint sha256", "step", "MLflow run", "sampler", "NFE", "timed on")


def _provenance_rows(prov: dict[str, Any]) -> list[tuple[str, ...]]:
    out = []
    for family, f in prov["families"].items():
        sp = f["speed"]
        out.append((family, f["checkpoint_sha256"][:16], _fmt(f.get("checkpoint_step")), f.get("mlflow_run_id") or "—",
                    sampler_name(f.get("sampling")) or "—", str(f["nfe"]),
                    f"{sp.get('device')}, {sp.get('threads')} threads, batch {sp.get('batch_size')}"))
    return out


def _header(prov: dict[str, Any]) -> str:
    return (f"Dataset sha256 `{prov['dataset_sha256'][:16]}…`; feature extractor `{prov['extractor'].get('id')}` "
            f"(test accuracy {_fmt(prov['extractor'].get('test_accuracy'))}); {prov['num_samples']} samples per family, "
            f"seed {prov['seed']}. Reference for FID/KID/PR/DC: the train split's features.")


def _markdown(rows, lines, plots, images, prov, folder) -> str:
    out = ["# genpipe comparison report", "", _header(prov), "", "The questions and where the answer is:", ""]
    out += [f"{i}. {q}" for i, q in enumerate(QUESTIONS, 1)]
    out += ["", "## What the numbers say", ""] + [f"- {line}" for line in lines]
    out += ["", "## One row per family (and per sampler setting)", "",
            "| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        out.append("| " + " | ".join(_cell(r, k) for k, _ in COLUMNS) + " |")
    out += [""] + TABLE_NOTES + [""]
    out += ["## Plots", ""] + [f"![{p.stem}]({_rel(p, folder)})" for p in plots]
    out += ["", "## Samples", ""]
    for family, paths in images.items():
        out += [f"### {family}", ""] + [f"![{p.stem}]({_rel(p, folder)})" for p in paths] + [""]
    out += ["## Provenance", "", "Every number and what produced it: [provenance.json](provenance.json).", "",
            "| " + " | ".join(PROVENANCE_COLUMNS) + " |", "|" + "---|" * len(PROVENANCE_COLUMNS)]
    out += ["| " + " | ".join(cells) + " |" for cells in _provenance_rows(prov)]
    return "\n".join(out) + "\n"


def _html(rows, lines, plots, images, prov, folder) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for _, h in COLUMNS)
    body = ""
    for r in rows:
        cells = "".join(f"<td>{esc(_cell(r, k))}</td>" for k, _ in COLUMNS)
        body += f"<tr{' class=sweep' if r.get('sweep') else ''}>{cells}</tr>\n"
    notes = "".join(f"<p>{esc(n)}</p>" for n in TABLE_NOTES)
    figs = "".join(f'<figure><img src="{esc(_rel(p, folder))}"><figcaption>{esc(p.stem)}</figcaption></figure>' for p in plots)
    samples = "".join(
        f"<h3>{esc(f)}</h3>" + "".join(f'<figure><img src="{esc(_rel(p, folder))}" style="max-width:100%">'
                                       f"<figcaption>{esc(p.stem)}</figcaption></figure>" for p in paths)
        for f, paths in images.items())
    verdict_html = "".join(f"<li>{inline_html(line)}</li>" for line in lines)
    questions = "".join(f"<li>{esc(q)}</li>" for q in QUESTIONS)
    prov_head = "".join(f"<th>{esc(h)}</th>" for h in PROVENANCE_COLUMNS)
    prov_body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>" for cells in _provenance_rows(prov))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>genpipe comparison</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}tr.sweep{{color:#555;background:#f6f6f6}}
figure{{display:inline-block;margin:8px;max-width:100%}}img{{max-width:100%}}code{{background:#f4f4f4;padding:0 3px}}</style></head><body>
<h1>genpipe comparison report</h1>
<p>{inline_html(_header(prov))}</p>
<ol>{questions}</ol>
<h2>What the numbers say</h2><ul>{verdict_html}</ul>
<h2>One row per family (and per sampler setting)</h2>
<div style="overflow-x:auto"><table><tr>{head}</tr>
{body}</table></div>
{notes}
<h2>Plots</h2>{figs}
<h2>Samples</h2>{samples}
<h2>Provenance</h2>
<p>Every number and what produced it: <a href="provenance.json">provenance.json</a>.</p>
<table><tr>{prov_head}</tr>{prov_body}</table>
</body></html>
"""
