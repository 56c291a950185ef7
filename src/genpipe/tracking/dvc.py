"""DVC bookkeeping: record what a Prefect run produced, so ``dvc status`` agrees.

The Prefect flow and ``dvc repro`` run the same stage functions and write the same paths;
after a flow run on the unmodified ``params.yaml``, :func:`commit_pipeline` hashes those
outputs into ``dvc.lock`` and the DVC cache (``dvc commit``), exactly as ``dvc repro``
would have, so a following ``dvc status`` is clean and ``dvc repro`` has nothing to do.
"""

from __future__ import annotations

from pathlib import Path


def is_dvc_repo(root: Path) -> bool:
    return (root / ".dvc").is_dir() and (root / "dvc.yaml").is_file()


def commit_pipeline(root: Path) -> list[str]:
    """``dvc commit --force`` every stage of ``root/dvc.yaml``; the stages committed."""
    from dvc.repo import Repo  # deferred: DVC takes seconds to import, and only this bookkeeping needs it

    with Repo(str(root)) as repo:
        stages = repo.commit(target=None, force=True)
    return sorted({s.addressing for s in stages if s is not None})


def pipeline_status(root: Path) -> dict:
    """``dvc status`` of the pipeline: {} when every stage is up to date."""
    from dvc.repo import Repo  # deferred: as above

    with Repo(str(root)) as repo:
        return repo.status()
