"""``genpipe <stage>``: the command line the DVC stages and people call.

Every stage reads ``params.yaml`` (``--params`` for another file) and takes ``-S
key.path=value`` overrides, the syntax of ``dvc exp run -S``. Bad input prints one line
naming the culprit and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from genpipe import __version__
from genpipe.config import load_config
from genpipe.errors import exit_from
from genpipe.models import FAMILIES
from genpipe.runtime import reuse_freed_memory
from genpipe.sections import MAX_SEED


def seed_arg(text: str) -> int:
    """argparse's type for a ``--seed``, as the params' seeds are: an integer in [0, MAX_SEED]."""
    value = _int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..{MAX_SEED}")
    return value


def count_arg(text: str) -> int:
    """argparse's type for a count (``--n``): an integer of at least 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (exit code 2), like every other bad input;
    ``--help`` still shows the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    families = sorted(FAMILIES)
    common = OneLineParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    common.add_argument(
        "-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a param, e.g. -S train.steps=100 (repeatable; value parsed as YAML)",
    )
    p = OneLineParser(prog="genpipe", description="Train, evaluate and compare image generative models.")
    p.add_argument("--version", action="version", version=f"genpipe {__version__}")
    sub = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    sub.add_parser("prepare", parents=[common], help="prepare the dataset: Parquet shards + card.json")
    t = sub.add_parser("train", parents=[common], help="train one family (in-process or on Ray Train)")
    t.add_argument("--family", required=True, choices=families, help="family to train")
    t.add_argument("--resume", action="store_true", help="continue from models/<family>/last.pt, same MLflow run")
    t.add_argument("--seed", type=seed_arg, default=None,
                   help="train only this seed: `seed` or one of `stability_seeds` (default: all of them, in turn)")
    t.add_argument("--parent-run-id", default=os.environ.get("GENPIPE_PARENT_RUN_ID"), help=argparse.SUPPRESS)
    sub.add_parser("features", parents=[common], help="train the feature network of every distribution metric")
    e = sub.add_parser("evaluate", parents=[common], help="the evaluation protocol for one family (metrics/<family>.json)")
    e.add_argument("--family", required=True, choices=families)
    sub.add_parser("report", parents=[common], help="the comparison report: reports/comparison.md and .html")
    g = sub.add_parser("generate", parents=[common], help="batch-generate images + a Parquet manifest into a store")
    g.add_argument("--family", default=None, choices=families, help="generate from models/<family>/checkpoint.pt")
    g.add_argument("--run-id", default=None, help="or from the checkpoint artifact of this MLflow run")
    g.add_argument("--n", type=count_arg, default=None, help="number of images, at least 1 (default: generate.n)")
    g.add_argument("--out", default=None, help="folder, file:///path or s3://bucket/prefix (default: generate.out/<family>)")
    g.add_argument("--seed", type=seed_arg, default=None, help="default: generate.seed")
    g.add_argument("--labels", default=None, help="conditional models: 7, 1,2,3 or balanced")
    w = sub.add_parser("latents", parents=[common], help="interpolations (and traversals) in a family's latent space")
    w.add_argument("--family", required=True, choices=families)
    w.add_argument("--seeds", type=seed_arg, nargs=2, default=(0, 1), metavar=("A", "B"), help="walk from seed A to seed B")
    w.add_argument("--steps", type=_int, default=10, help="frames per walk (at least 2)")
    w.add_argument("--out", default=None, help="folder (default: reports/latents/<family>)")
    return p


def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = load_config(args.params, args.overrides)  # validated before anything is written
    reuse_freed_memory()  # every stage computes with torch on the CPU somewhere
    # each stage imports only its own module below: Ray, MLflow and matplotlib cost seconds to import
    if args.stage == "prepare":
        from genpipe.data import prepare_dataset

        card = prepare_dataset(cfg)
        print(f"prepared {card['source']} {tuple(card['shape'])}: {card['counts']} -> {cfg.paths.data} (sha256 {card['sha256'][:12]})")
        if card.get("skipped", {}).get("count"):  # data.on_bad_file=skip: say so, the card lists them
            print(f"skipped {card['skipped']['count']} unreadable files (first: {card['skipped']['first'][0]['file']}); "
                  f"see {cfg.paths.data / 'card.json'}")
    elif args.stage == "train":
        from genpipe.training import train_family

        seeds = [args.seed] if args.seed is not None else [cfg.seed, *cfg.stability_seeds]
        for seed in seeds:
            out = train_family(cfg, args.family, resume=args.resume, parent_run_id=args.parent_run_id, seed=seed)
            losses = ", ".join(f"{k}={v:.4g}" for k, v in sorted(out.losses.items()))
            print(f"trained {out.family} (seed {seed}): {out.step} steps in {out.seconds:.1f}s -> {out.checkpoint} "
                  f"(mlflow run {out.run_id}); {losses}")
    elif args.stage == "features":
        from genpipe.evaluation.features import train_feature_net

        card = train_feature_net(cfg)
        print(f"feature network {card['id']}: test accuracy {card['test_accuracy']:.4f}, and the real data's reference "
              f"statistics -> {cfg.paths.models}/features")
    elif args.stage == "evaluate":
        from genpipe.evaluation.stage import evaluate_family

        result = evaluate_family(cfg, args.family)
        q = result.quality
        print(json.dumps({"family": result.family,
                          "likelihood": result.likelihood.model_dump() if result.likelihood is not None else None,
                          "fid": q.fid, "precision": q.precision, "recall": q.recall,
                          "images_per_s": result.speed.images_per_s, "extractor": q.extractor_id,
                          "samples_png": result.samples_png}, indent=2))
    elif args.stage == "report":
        from genpipe.evaluation.report import plain, write_report

        out = write_report(cfg)
        print("\n".join(plain(line) for line in out["verdict"]))
        print(f"wrote {out['markdown']} and {out['html']}")
    elif args.stage == "latents":
        from genpipe.generation.latents import latent_walks

        paths = latent_walks(cfg, args.family, *args.seeds, args.steps, Path(args.out) if args.out else None)
        print("wrote " + ", ".join(p.as_posix() for p in paths))
    elif args.stage == "generate":
        from genpipe.generation import generate_images

        res = generate_images(cfg, args.family, run_id=args.run_id, n=args.n, out=args.out, seed=args.seed, labels=args.labels)
        print(f"generated {res.num_images} images in {res.seconds:.1f}s -> {res.out} (manifest {res.manifest_uri})")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    exit_from(lambda: run(argv))


if __name__ == "__main__":
    main()
