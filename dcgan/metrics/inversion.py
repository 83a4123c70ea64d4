"""Image -> latent for test images three ways: the encoder alone, the encoder then refinement, refinement
alone from a random start; reconstruction error and time of each. Needs the generator and the encoder (the
encoder stage's output); without them it writes no keys."""
from __future__ import annotations

import time

import numpy as np

from . import REGISTRY, EvalContext, Metric, Scores

INVERSION_IMAGES = 64  # test images projected three ways


def inversion_modes(G, E, images: np.ndarray, steps: int, device, seed: int = 0, progress: bool = False) -> dict:
    """Reconstruction MSE (in [-1, 1] units, mean over images) and wall time of image -> latent three ways:
    the encoder alone, the encoder then `steps` of refinement, and refinement alone from a random start."""
    from ..generation import invert
    out = {}
    for name, enc, n_steps in (("encoder", E, 0), ("encoder_refined", E, steps), ("refined", None, steps)):
        t0 = time.perf_counter()
        _, err = invert(G, images, n_steps, device, seed=seed, encoder=enc, progress=progress)
        out[f"inversion_mse_{name}"] = float(err.mean())
        out[f"inversion_s_{name}"] = time.perf_counter() - t0
    out["inversion_images"], out["inversion_steps"] = len(images), steps
    return out


@REGISTRY.register("inversion")
class InversionMetric(Metric):
    help = {
        "inversion_mse_encoder": "reconstruction MSE ([-1, 1] units) of test images from the encoder's latents",
        "inversion_mse_encoder_refined": "the same, the encoder's latents then invert_steps of refinement",
        "inversion_mse_refined": "the same, refinement alone from the best of random latents",
        "inversion_s_encoder": "seconds taken by the encoder alone",
        "inversion_s_encoder_refined": "seconds taken by the encoder and refinement",
        "inversion_s_refined": "seconds taken by refinement alone",
        "inversion_images": "test images projected",
        "inversion_steps": "refinement steps (invert_steps)",
    }
    headline = ("inversion_mse_encoder", "inversion_mse_encoder_refined", "inversion_mse_refined")
    order = 50

    def evaluate(self, ctx: EvalContext) -> Scores:
        if ctx.generator is None or ctx.encoder is None:
            return {}
        ctx.log(f"inversion of {min(len(ctx.test), INVERSION_IMAGES)} test images, three ways")
        return inversion_modes(ctx.generator, ctx.encoder, np.array(ctx.test_subset(INVERSION_IMAGES)),
                               ctx.params["invert_steps"], ctx.device, seed=ctx.seed)
