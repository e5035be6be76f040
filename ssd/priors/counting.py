"""What a set of clustered shapes would cost in priors on a layout: a shape on a level of f x f
cells costs f^2 priors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssd.priors.generator import PriorSet


@dataclass(frozen=True)
class PriorCosts:
    """`priors_all_levels`: every shape on every level; `priors_by_size`: each shape on the one
    level whose shapes are closest to its size, every level keeping at least one shape."""

    priors_all_levels: int
    priors_by_size: int

    def to_dict(self) -> dict[str, int]:
        return {"priors_all_levels": self.priors_all_levels, "priors_by_size": self.priors_by_size}


def cost_by_size(shapes_px: np.ndarray, prior_set: PriorSet) -> int:
    """Priors if each shape [K, 2] (w, h input pixels) sits on the one level of `prior_set` whose
    scale (geometric mean of its shapes' sqrt area) is closest to its own (in log sqrt area),
    every level keeping at least one shape."""
    level_scale = np.array([np.exp(np.mean([0.5 * np.log(w * h) for w, h in s])) for s in prior_set.shapes])
    scale = np.sqrt(shapes_px[:, 0] * shapes_px[:, 1])
    level = np.abs(np.log(scale)[:, None] - np.log(level_scale)[None, :]).argmin(axis=1)
    counts = np.maximum(np.bincount(level, minlength=prior_set.num_levels), 1)
    return int(sum(int(f) ** 2 * int(n) for f, n in zip(prior_set.feature_maps, counts)))


def prior_costs(shapes_px: np.ndarray, prior_set: PriorSet) -> PriorCosts:
    """The prior count of shapes [K, 2] (w, h input pixels) on `prior_set`'s layout, both ways."""
    cells = sum(int(f) ** 2 for f in prior_set.feature_maps)
    return PriorCosts(int(shapes_px.shape[0]) * cells, cost_by_size(shapes_px, prior_set))
