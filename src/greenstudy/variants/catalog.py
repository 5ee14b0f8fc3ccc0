"""The four variants by name, and the order they run in (a derived variant needs its baseline first)."""

from __future__ import annotations

from collections.abc import Callable

from greenstudy.variants.baseline import run_amp, run_baseline
from greenstudy.variants.common import VariantJob
from greenstudy.variants.pruned import run_pruned
from greenstudy.variants.quantized import run_quantized
from greenstudy.variants.record import VariantRecord

VARIANT_RUNNERS: dict[str, Callable[[VariantJob], VariantRecord]] = {
    "baseline": run_baseline,
    "amp": run_amp,
    "pruned": run_pruned,
    "quantized": run_quantized,
}
DERIVED = ("pruned", "quantized")


def execution_order(variants: tuple[str, ...], baseline_given: bool = False) -> list[str]:
    """Requested variants, with the baseline first whenever pruned or quantized need it (and no baseline
    of this run was given: `from_run`)."""
    if not baseline_given and any(v in DERIVED for v in variants):
        return ["baseline"] + [v for v in variants if v != "baseline"]
    return list(variants)
