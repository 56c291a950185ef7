"""On-demand batch generation: one flow run = one generation job, with parameters.

Trigger it through its deployment (``prefect deployment run
'genpipe-batch-generation/on-demand' -p family=vae -p n=10000 -p out=s3://bucket/prefix``)
or run it here: ``python -m flows.generate --family vae --n 1000 --out s3://bucket/prefix``.
"""

from __future__ import annotations

import argparse
from typing import Any

from prefect import flow

import tasks


@flow(name="genpipe-batch-generation", log_prints=True)
def batch_generation(
    family: str | None = "vae",
    run_id: str | None = None,
    n: int = 64,
    seed: int = 0,
    labels: str | None = None,
    out: str | None = None,
    params: str = "params.yaml",
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Generate ``n`` images from a family's checkpoint (or an MLflow run's) into ``out``."""
    return tasks.generate(params, overrides, family, run_id=run_id, n=n, out=out, seed=seed, labels=labels)


def main() -> None:
    p = argparse.ArgumentParser(description="Batch-generate images as a Prefect flow run.")
    p.add_argument("--family", default="vae")
    p.add_argument("--run-id", default=None)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args()
    res = batch_generation(args.family, args.run_id, args.n, args.seed, args.labels, args.out, args.params)
    print(f"generated {res['num_images']} images -> {res['out']} (manifest {res['manifest_uri']})")


if __name__ == "__main__":
    main()
