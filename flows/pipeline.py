"""The training pipeline: prepare -> train (each family its own task, concurrently, beside
the feature network; and a replicate per entry of ``stability_seeds``) -> evaluate ->
generate -> the comparison report, under one parent MLflow run; then DVC records what it made.

Run it with ``python -m flows.pipeline`` (what ``make run`` does). With no
``PREFECT_API_URL`` Prefect starts a temporary local API for the run; with it set, the
flow run and its task runs show up on that server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import as_completed

import tasks
from flows import command_line
from genpipe.cli import OneLineParser
from genpipe.config import load_config
from genpipe.evaluation.report import plain
from genpipe.tracking.dvc import is_dvc_repo
from genpipe.results import EvaluationResult
from genpipe.runtime import configure_cpu


@flow(name="genpipe-pipeline", log_prints=True)
def pipeline(params: str = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    """Train, evaluate and batch-generate every family listed in ``families``."""
    logger = get_run_logger()
    cfg = load_config(params, overrides or [])  # bad config fails here, before any task
    configure_cpu(cfg.pipeline.threads)  # this process's own work: features, evaluation, generation
    card = tasks.prepare(params, overrides)
    logger.info("dataset %s %s sha256 %s", card["source"], card["counts"], card["sha256"][:12])
    parent = tasks.start_pipeline_run(params, overrides)
    ok = False
    metrics: dict[str, EvaluationResult] = {}
    report: dict[str, Any] = {}
    try:
        retries = cfg.pipeline.task_retries
        train, generate = tasks.train.with_options(retries=retries), tasks.generate.with_options(retries=retries)
        features = tasks.features.submit(params, overrides, parent)
        # the models, then the replicates with the other seeds (for the spread of FID across seeds;
        # none in the quick profile): `concurrent_trainings` at a time, each next one started as
        # soon as any running one ends (failed or not), in `families` order
        seeds = (cfg.seed, *cfg.stability_seeds)
        queue = [(f, s) for s in seeds for f in cfg.families]
        slots = cfg.pipeline.concurrent_trainings or len(queue)
        if cfg.train.runner == "local" and slots > 1:  # in this process's threads: one GIL
            logger.info("train.runner=local trains in this process: one family at a time")
            slots = 1
        runs: dict[tuple[str, int], Any] = {}
        running: list[Any] = []
        evaluated: dict[str, Any] = {}
        generated: dict[str, Any] = {}
        for f, s in queue:
            if len(running) >= slots:
                running.remove(next(as_completed(running)))
            runs[(f, s)] = train.submit(params, overrides, f, parent, s)
            running.append(runs[(f, s)])
            if s == cfg.seed:
                generated[f] = generate.submit(params, overrides, f, wait_for=[runs[(f, s)]])
            if s == seeds[-1]:  # the family's last training: its evaluation scores them all
                evaluated[f] = tasks.evaluate.submit(params, overrides, f,
                                                     wait_for=[features, *(runs[(f, r)] for r in seeds)])
        trained = {f: runs[(f, cfg.seed)] for f in cfg.families}
        outcomes = {f: fut.result() for f, fut in trained.items()}
        metrics = {f: fut.result() for f, fut in evaluated.items()}
        images = {f: fut.result() for f, fut in generated.items()}
        report = tasks.report(params, overrides)
        ok = True
    finally:
        files = [report["markdown"], report["html"]] if report else None
        tasks.finish_pipeline_run(parent, metrics, ok, files)
    recorded: list[str] = []
    if cfg.pipeline.record_with_dvc and not overrides and Path(params).resolve() == Path("params.yaml").resolve():
        if is_dvc_repo(Path.cwd()):
            recorded = tasks.record_with_dvc(".")
        else:
            logger.info("not a DVC repo here: outputs are not recorded with DVC")
    return {
        "mlflow_parent_run_id": parent,
        "dataset": card,
        "metrics": {f: r.likelihood.model_dump() if r.likelihood is not None else None for f, r in metrics.items()},
        "seconds": {
            f: {"train": outcomes[f]["seconds"], "evaluate": metrics[f].seconds, "generate": images[f]["seconds"]}
            for f in cfg.families
        },
        "generated": {f: {k: g[k] for k in ("out", "manifest_uri", "num_images")} for f, g in images.items()},
        "report": report,
        "dvc_recorded": recorded,
    }


def main() -> None:
    p = OneLineParser(prog="python -m flows.pipeline", description="Run the genpipe training pipeline on Prefect.")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    command_line(lambda: _run(args.params, args.overrides or None))


def _run(params: str, overrides: list[str] | None) -> None:
    load_config(params, overrides or [])  # bad params: one line, before Prefect starts a server
    result = pipeline(params=params, overrides=overrides)
    for family, m in result["metrics"].items():
        ll = f"test {m['estimator']} {m['bits_per_dim']:.3f} bits/dim" if m else "no likelihood"
        print(f"{family}: {ll}; trained in {result['seconds'][family]['train']:.0f}s; images -> {result['generated'][family]['out']}")
    for line in result["report"]["verdict"]:
        print(plain(line))
    print(f"report: {result['report']['markdown']} and {result['report']['html']}")
    print(f"MLflow parent run {result['mlflow_parent_run_id']}; DVC recorded: {', '.join(result['dvc_recorded']) or 'nothing'}")


if __name__ == "__main__":
    main()
