"""The only Pareto code: non-dominated (energy, accuracy) points and their 2-D hypervolume.

Convention everywhere: accuracy is maximised, energy minimised."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated (energy, accuracy) points, lowest energy first: no other point has
    energy <= and accuracy >= with one of them strictly better. Equal points are all kept."""
    front = []
    for i, (energy, acc) in enumerate(points):
        dominated = any(
            e <= energy and a >= acc and (e < energy or a > acc) for j, (e, a) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def hypervolume_2d(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by `points` = [(accuracy, energy), ...] and bounded by `reference` =
    (acc_ref, energy_ref). Points not better than the reference in both objectives add nothing.
    Sweep over energy: each slab up to the next energy has the height of the best accuracy so far."""
    acc_ref, energy_ref = reference
    useful = sorted((energy, acc) for acc, energy in points if acc > acc_ref and energy < energy_ref)
    area, best = 0.0, acc_ref
    next_energies = [energy for energy, _ in useful[1:]] + [energy_ref]
    for (energy, acc), next_energy in zip(useful, next_energies[: len(useful)], strict=True):
        best = max(best, acc)
        area += (next_energy - energy) * (best - acc_ref)
    return area
