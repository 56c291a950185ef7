"""On-demand batch generation: one flow run = one generation job, with parameters.

Trigger it through its deployment (``prefect deployment run
'genpipe-batch-generation/on-demand' -p family=vae -p n=10000 -p out=s3://bucket/prefix``)
or run it here: ``python -m flows.generate --family vae --n 1000 --out s3://bucket/prefix``.
Each run logs where the images and the manifest went and leaves the same as a markdown
artifact (key ``genpipe-batch-generation``) on the flow run's page in the Prefect UI.
"""

from __future__ import annotations

import argparse
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

import tasks
from flows import command_line
from genpipe.cli import OneLineParser, count_arg, seed_arg
from genpipe.config import load_config
from genpipe.models import FAMILIES

ARTIFACT_KEY = "genpipe-batch-generation"  # one key: the UI keeps every job's table under it


@flow(name="genpipe-batch-generation", log_prints=True)
def batch_generation(
    family: str | None = None,
    run_id: str | None = None,
    n: int = 64,
    seed: int = 0,
    labels: str | None = None,
    out: str | None = None,
    params: str = "params.yaml",
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Generate ``n`` images from a family's checkpoint (or an MLflow run's) into ``out``;
    ``family`` defaults to the first of params' ``families``."""
    if family is None and run_id is None:
        family = load_config(params, overrides or []).families[0]
    res = tasks.generate(params, overrides, family, run_id=run_id, n=n, out=out, seed=seed, labels=labels)
    get_run_logger().info("job %s: %d images under %s, manifest %s", res["job_id"], res["num_images"], res["out"],
                          res["manifest_uri"])
    create_markdown_artifact(summary_markdown(res, family, run_id), key=ARTIFACT_KEY,
                             description=f"generation job {res['job_id']}: where its images and manifest went")
    return res


def summary_markdown(res: dict[str, Any], family: str | None, run_id: str | None) -> str:
    """A two-column markdown table of one generation job (``res`` as the generate task returns it)."""
    rows = [
        ("images", res["num_images"]),
        ("out", f"`{res['out']}`"),
        ("manifest", f"`{res['manifest_uri']}`"),
        ("family", family or "from the MLflow run"),
        ("MLflow run", f"`{run_id}`" if run_id else "none (the family's checkpoint)"),
        ("job id", f"`{res['job_id']}`"),
        ("seconds", f"{res['seconds']:.1f}"),
    ]
    return "\n".join(["### Batch generation", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def main() -> None:
    p = OneLineParser(prog="python -m flows.generate", description="Batch-generate images in one Prefect run.")
    p.add_argument("--family", default=None, choices=sorted(FAMILIES), help="default: the first of params' families")
    p.add_argument("--run-id", default=None)
    p.add_argument("--n", type=count_arg, default=64)
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--labels", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args()
    command_line(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    load_config(args.params)  # bad params: one line, before Prefect starts a server
    res = batch_generation(args.family, args.run_id, args.n, args.seed, args.labels, args.out, args.params)
    print(f"generated {res['num_images']} images -> {res['out']} (manifest {res['manifest_uri']})")


if __name__ == "__main__":
    main()
