"""The study's pictures, from Optuna's own plots: a matplotlib PNG and a self-contained plotly HTML
(plotly.js inlined, opens offline). `final`: the Pareto front of the completed trials; `to_target`
(one objective): the energy to target of every completed trial over the trial number."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna

from greenstudy.study.front import objective_of


def plot_study(study: optuna.Study, folder: Path) -> list[Path]:
    """Write the study's PNG and HTML into `folder`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vis = optuna.visualization
    if objective_of(study) == "final":
        stem, title = "pareto_front", f"Pareto front: {study.study_name}"
        names = ["val_acc1 (%)", "train + val energy (kWh)"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = vis.matplotlib.plot_pareto_front(study, target_names=names)
        figure = vis.plot_pareto_front(study, target_names=names)
    else:
        stem, title = "energy_to_target", f"Energy to target: {study.study_name}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = vis.matplotlib.plot_optimization_history(study, target_name="energy_to_target_kwh")
        figure = vis.plot_optimization_history(study, target_name="energy_to_target_kwh")
    axes.set_title(title)
    png, html = folder / f"{stem}.png", folder / f"{stem}.html"
    axes.figure.savefig(png, dpi=120, bbox_inches="tight")
    plt.close(axes.figure)
    figure.update_layout(title=title)
    figure.write_html(html, include_plotlyjs=True, full_html=True)
    return [png, html]
