"""The GAN family: DCGAN players (model.py), the games they play (losses.py) and its config
section (config.py)."""

from __future__ import annotations

from genpipe.models.base import Family
from genpipe.models.gan.config import GANConfig
from genpipe.models.gan.model import build_gan, GAN

def claims(results, losses) -> list[str]:
    """The introductions' GAN claims: fast sampling, unstable training (the discriminator's loss,
    the spread of FID over training seeds) and mode collapse (recall, coverage, classes)."""
    speed = {f: r.speed.images_per_s for f, r in results.items()}
    gan, q = results["gan"].speed, results["gan"].quality
    faster = [f for f in speed if speed[f] > speed["gan"]]
    where = f"wall-clock on {gan.device}, {gan.threads} threads, batch {gan.batch_size}"
    lines = [f"'GANs sample fast': GAN {speed['gan']:.0f} images/s ({where}; rates move with machine load, "
             f"the NFE does not) at NFE {gan.nfe}" + (f"; faster: {', '.join(faster)}." if faster else ", the fastest here.")]
    d_curve = losses.get("gan", {}).get("discriminator/loss")
    if d_curve and len(d_curve) > 4:
        tail = [v for _, v in d_curve[len(d_curve) // 2 :]]
        mean = sum(tail) / len(tail)
        sd = (sum((v - mean) ** 2 for v in tail) / len(tail)) ** 0.5
        lines.append(f"'GANs are unstable': over the second half of training the discriminator loss has mean "
                     f"{mean:.3g} and standard deviation {sd:.3g}.")
    seeds = {f: r.seeds for f, r in results.items() if r.seeds is not None}
    if "gan" in seeds and len(seeds) > 1:
        cv = {f: s.fid_std / s.fid_mean for f, s in seeds.items()}
        order = sorted(cv, key=cv.get, reverse=True)
        lines.append("FID spread across training seeds (sd / mean): " + ", ".join(f"{f} {cv[f]:.2f}" for f in order)
                     + f" — the GAN's is **{'the largest' if order[0] == 'gan' else 'not the largest'}**.")
    elif not seeds:
        lines.append("The spread of FID across training seeds is not measured (one seed; set `stability_seeds`).")
    classes = q.classes_covered if q.classes_covered is not None else "—"
    kl = "—" if q.class_kl is None else f"{q.class_kl:.3g}" if abs(q.class_kl) < 100 else f"{q.class_kl:.0f}"
    lines.append(f"GAN diversity: recall {q.recall:.2f}, coverage {q.coverage:.2f}, "
                 f"{classes} classes covered, class KL {kl}.")
    return lines


FAMILY = Family(
    name="gan",
    config_type=GANConfig,
    build=build_gan,
    summary="DCGAN; non-saturating, hinge or WGAN-GP loss, optional spectral norm; no likelihood",
    unused_parameters=True,  # each phase steps one player: the other's parameters get no gradient
    claims=claims,
)

__all__ = ["FAMILY", "GAN", "GANConfig", "build_gan"]
