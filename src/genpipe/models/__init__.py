"""Model families behind one interface, and the explicit registry of them.

Adding a family: a module with its model and a ``FAMILY`` spec, its config section in
:mod:`genpipe.config`, and one line in :data:`FAMILIES`. The contract tests in
``tests/models/test_contract.py`` then run over it.
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


__all__ = ["FAMILIES", "Family", "GenerativeModel", "ImageSpec", "LogLikelihood", "OptimizerGroup", "get_family", "sampling_options"]
