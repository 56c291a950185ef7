"""The comparison report's presentation: the table's cells and notes, and the Markdown and HTML
pages rendered from ``templates/comparison.{md,html}.j2``."""

from __future__ import annotations

import html as _html_lib
import math
import re
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup


QUESTIONS = (
    "Image quality: FID and KID (lower is better), precision and density, and the sample grids.",
    "Diversity / mode collapse: recall, coverage, classes covered and KL of the class histogram to the labels.",
    "Likelihood: held-out bits/dim (lower is better); exact or a bound, as marked.",
    "Sampling speed: images/s at a stated batch size and network evaluations per image (NFE).",
    "Training cost and stability: wall-clock, steps, and the training-loss curves.",
)

COLUMNS = [  # (key, header); the keys of metrics/<family>.json (genpipe.results.EvaluationResult.summary)
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

PROVENANCE_COLUMNS = ("family", "checkpoint sha256", "step", "MLflow run", "sampler", "NFE", "timed on")


def fmt(v: Any, digits: int = 3) -> str:
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
    text = _html_lib.escape(line, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def cell(row: dict[str, Any], key: str) -> str:
    """One table cell: the value, marked where its column means something else for this row."""
    value = row.get(key)
    if key in SCALE and isinstance(value, (int, float)):
        value = float(value) * SCALE[key]
    text = fmt(value)
    if key == "bits_per_dim" and row.get("bits_per_dim_is") == "bound":
        text += " (bound)"
    return text


def _rel(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


def _provenance_rows(prov: dict[str, Any]) -> list[tuple[str, ...]]:
    out = []
    for family, f in prov["families"].items():
        sp = f["speed"]
        out.append((family, f["checkpoint_sha256"][:16], fmt(f.get("checkpoint_step")), f.get("mlflow_run_id") or "—",
                    f.get("sampler") or "—", str(f["nfe"]),
                    f"{sp.get('device')}, {sp.get('threads')} threads, batch {sp.get('batch_size')}"))
    return out


def _header(prov: dict[str, Any]) -> str:
    # Markdown inline marks; the HTML page turns them into markup with inline_html.
    return (f"Dataset sha256 `{prov['dataset_sha256'][:16]}…`; feature extractor `{prov['extractor'].get('id')}` "
            f"(test accuracy {fmt(prov['extractor'].get('test_accuracy'))}); {prov['num_samples']} samples per family, "
            f"seed {prov['seed']}. Reference for FID/KID/PR/DC: the train split's features.")


def _html_finalize(value: Any) -> Any:
    """Escape every interpolated value as ``html.escape`` does (``&quot;``, ``&#x27;``), not with
    markupsafe's entities (``&#34;``, ``&#39;``); markup already marked safe passes through."""
    if isinstance(value, Markup):
        return value
    return Markup(_html_lib.escape(str(value)))


def _environment(**options: Any) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("genpipe.evaluation", "templates"),
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined, **options)
    env.filters.update(fmt=fmt, cell=cell, rel=_rel)
    env.globals.update(QUESTIONS=QUESTIONS, COLUMNS=COLUMNS, TABLE_NOTES=TABLE_NOTES,
                       PROVENANCE_COLUMNS=PROVENANCE_COLUMNS)
    return env


_MARKDOWN = _environment(autoescape=False)
_HTML = _environment(autoescape=True, finalize=_html_finalize)
# The verdict lines and the header carry **bold** and `code`: inline_html escapes the rest itself.
_HTML.filters["inline_html"] = lambda line: Markup(inline_html(line))


def _context(lines, rows, plots, images, prov, folder) -> dict[str, Any]:
    return {"header": _header(prov), "lines": lines, "rows": rows, "plots": plots, "images": images,
            "folder": folder, "provenance_rows": _provenance_rows(prov)}


def markdown(rows, lines, plots, images, prov, folder) -> str:
    """``reports/comparison.md``."""
    return _MARKDOWN.get_template("comparison.md.j2").render(_context(lines, rows, plots, images, prov, folder))


def html(rows, lines, plots, images, prov, folder) -> str:
    """``reports/comparison.html``."""
    return _HTML.get_template("comparison.html.j2").render(_context(lines, rows, plots, images, prov, folder))
