"""Model families behind one interface, and the explicit registry of them.

Adding a family: a folder ``models/<family>/`` with its model, its config section and its
``FAMILY`` spec (:class:`genpipe.models.base.Family`), one line in :data:`FAMILIES`, and its
section in params.yaml. Nothing else names it: the config, the stages, the report and the
contract tests in ``tests/models/test_contract.py`` ask the registry (docs/families.md).
"""

from __future__ import annotations

from genpipe.errors import InputError
from genpipe.models import diffusion, flow, gan, gmm, pixelcnn, vae
from genpipe.models.base import Family, GenerativeModel, ImageSpec, LogLikelihood, OptimizerGroup

FAMILIES: dict[str, Family] = {
    "vae": vae.FAMILY,
    "gmm": gmm.FAMILY,
    "gan": gan.FAMILY,
    "flow": flow.FAMILY,
    "pixelcnn": pixelcnn.FAMILY,
    "diffusion": diffusion.FAMILY,
}


def register(family: Family) -> None:
    """Add a family at run time (a plug-in, or a test's); its name is its params.yaml section."""
    if not family.name.isidentifier() or family.name in FAMILIES:
        raise ValueError(f"family name {family.name!r}: taken or not an identifier")
    FAMILIES[family.name] = family


def get_family(name: str) -> Family:
    """The registered family ``name``; :class:`InputError` naming the known ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise InputError(f"--family {name}: unknown family (known: {', '.join(FAMILIES)})") from None


def sampling_options(cfg, family: str):
    """The family's ``sampling`` section in today's params (None if it has none): sampling
    settings are chosen at generation time, not fixed by the trained checkpoint."""
    return getattr(cfg.family(family), "sampling", None)


__all__ = ["FAMILIES", "Family", "GenerativeModel", "ImageSpec", "LogLikelihood", "OptimizerGroup", "get_family", "register",
           "sampling_options"]
