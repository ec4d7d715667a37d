"""Metrics for saliency maps: pointing game, map density, insertion / deletion, and the
model-randomisation sanity check. Each is a batched function of maps, images, targets
and (where it needs one) the model; see each module's docstring for the exact choices.
"""

from .density import map_density, masked_probabilities
from .insertion import Curves, area_under_curve, blur, deletion, insertion
from .pointing import box_mask, energy_pointing_game, max_point, pointing_game, pointing_hit
from .sanity import (
    SanityResult,
    Step,
    hog_similarity,
    randomisation_steps,
    randomise_,
    randomised_models,
    sanity_check,
    similarities,
    spearman,
    ssim,
)

__all__ = [
    "Curves",
    "SanityResult",
    "Step",
    "area_under_curve",
    "blur",
    "box_mask",
    "deletion",
    "energy_pointing_game",
    "hog_similarity",
    "insertion",
    "map_density",
    "masked_probabilities",
    "max_point",
    "pointing_game",
    "pointing_hit",
    "randomisation_steps",
    "randomise_",
    "randomised_models",
    "sanity_check",
    "similarities",
    "spearman",
    "ssim",
]
