"""The report's pictures: accuracy against lifecycle energy (PNG and an offline plotly page), the own
energy per phase and component, and the learning curves. Each function returns what it drew, so the
report can check the pictures against the data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402

from greenstudy.report.comparison import COMPONENTS, PHASES, Curve, RunPoint, front, lifecycle_energy  # noqa: E402

COMPONENT_COLOURS = {"cpu": "#4c72b0", "gpu": "#55a868", "ram": "#c44e52"}
MARKERS = {"baseline": "o", "amp": "^", "pruned": "s", "quantized": "D"}
PLOTLY_SYMBOLS = {"baseline": "circle", "amp": "triangle-up", "pruned": "square", "quantized": "diamond"}
FRONT_LABEL = "non-dominated front"
ENERGY_AXIS = "lifecycle energy per run (kWh, CodeCarbon; own energy_kwh where not logged)"
ACCURACY_AXIS = "test accuracy top-1 (%)"


def model_colours(points: Sequence[RunPoint]) -> dict[str, str]:
    """One colour per model."""
    palette = plt.get_cmap("tab10").colors
    models = sorted({p.model for p in points})
    return {model: matplotlib.colors.to_hex(palette[i % len(palette)]) for i, model in enumerate(models)}


def _by_label(points: Sequence[RunPoint]) -> dict[tuple[str, str], list[RunPoint]]:
    groups: dict[tuple[str, str], list[RunPoint]] = {}
    for point in points:
        groups.setdefault((point.model, point.variant), []).append(point)
    return groups


def _count_scatter_points(ax: plt.Axes) -> int:
    return sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))


def plot_accuracy_vs_energy(points: Sequence[RunPoint], path: Path) -> int:
    """test_acc1 against lifecycle energy, one marker per run (colour = model, marker = variant), the
    non-dominated runs joined; returns the number of run markers drawn."""
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    colours = model_colours(points)
    for (model, variant), members in _by_label(points).items():
        ax.scatter([lifecycle_energy(p) for p in members], [p.metrics["test_acc1"] for p in members],
                   c=colours[model], marker=MARKERS.get(variant, "P"), s=80, edgecolors="black", linewidths=0.6,
                   label=f"{model} / {variant}", zorder=3)
    drawn = _count_scatter_points(ax)
    best = front(points)
    if best:
        ax.plot([lifecycle_energy(p) for p in best], [p.metrics["test_acc1"] for p in best], "--", color="0.4",
                lw=1.2, marker="o", markersize=16, markerfacecolor="none", label=FRONT_LABEL, zorder=2)  # ringed
    ax.set_xlabel(ENERGY_AXIS)
    ax.set_ylabel(ACCURACY_AXIS)
    ax.set_title("Accuracy bought per kWh: every run, non-dominated front dashed")
    ax.grid(alpha=0.3)
    if points:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no finished runs to plot", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def write_accuracy_vs_energy_html(points: Sequence[RunPoint], path: Path) -> int:
    """The same picture as an interactive, self-contained (offline) plotly page; returns run markers."""
    import plotly.graph_objects as go

    fig = go.Figure()
    colours = model_colours(points)
    for (model, variant), members in _by_label(points).items():
        fig.add_trace(go.Scatter(
            x=[lifecycle_energy(p) for p in members], y=[p.metrics["test_acc1"] for p in members],
            mode="markers", name=f"{model} / {variant}", customdata=[[p.run_id, p.name] for p in members],
            marker={"color": colours[model], "symbol": PLOTLY_SYMBOLS.get(variant, "cross"), "size": 12,
                    "line": {"width": 1, "color": "black"}},
            hovertemplate="%{customdata[1]}<br>run %{customdata[0]}<br>%{x:.4g} kWh<br>acc@1 %{y:.2f}%<extra></extra>",
        ))
    drawn = sum(len(trace.x) for trace in fig.data)
    best = front(points)
    if best:
        fig.add_trace(go.Scatter(x=[lifecycle_energy(p) for p in best], y=[p.metrics["test_acc1"] for p in best],
                                 mode="lines+markers", name=FRONT_LABEL, line={"dash": "dash", "color": "#666"}, hoverinfo="skip",
                                 marker={"symbol": "circle-open", "size": 22, "color": "#666"}))
    fig.update_layout(title="Accuracy bought per kWh (every run; dashed: non-dominated front)",
                      xaxis_title=ENERGY_AXIS, yaxis_title=ACCURACY_AXIS, template="plotly_white")
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return drawn


def run_labels(points: Sequence[RunPoint]) -> list[str]:
    """model/variant, with a short run id where one label has several runs."""
    groups = _by_label(points)
    return [p.label + (f" {p.run_id[:6]}" if len(groups[(p.model, p.variant)]) > 1 else "") for p in points]


def plot_energy_breakdown(points: Sequence[RunPoint], breakdowns: Sequence[dict[str, dict[str, float]]], path: Path) -> int:
    """Own CPU / GPU / RAM energy stacked per run, one panel per phase (train, val, setup, test); returns
    the number of runs drawn (bars per panel)."""
    labels = run_labels(points)
    width = min(20.0, max(10.0, 3 + 0.5 * len(points) * len(PHASES)))
    fig, axes = plt.subplots(1, len(PHASES), figsize=(width, 5), layout="constrained")
    for ax, phase in zip(axes, PHASES, strict=True):
        bottom = [0.0] * len(points)
        for component in COMPONENTS:
            values = [b[phase][component] for b in breakdowns]
            ax.bar(range(len(points)), values, bottom=bottom, color=COMPONENT_COLOURS[component], label=component.upper())
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_title(phase)
        ax.set_xticks(range(len(points)), labels, rotation=45, ha="right", fontsize=8)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(axis="y", alpha=0.3)
    drawn = len(axes[0].patches) // len(COMPONENTS)  # bars stacked per run in the first panel
    axes[0].set_ylabel("own energy (kWh)")
    axes[-1].legend(fontsize=8)
    fig.suptitle("Where each run's own energy goes: CPU / GPU / RAM per phase (CodeCarbon; upstream baseline "
                 "training not included)")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def plot_learning_curves(curves: Sequence[Curve], path: Path, colours: dict[str, str]) -> int:
    """val_acc1 against cumulative train + val energy per run; a run derived from another (pruned) starts
    where that run's training ended, one without epochs of its own (quantized) shows its source's curve
    dotted. Returns the number of curves drawn."""
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    lines = []
    for curve in curves:
        model, variant = curve.label.split("/", 1)
        style = ":" if curve.source else "--" if curve.derived else "-"
        suffix = f", epochs of {curve.source[:8]}" if curve.source else ""
        hollow = {"markerfacecolor": "none", "markersize": 10} if curve.source else {}  # its source's markers show through
        (line,) = ax.plot(curve.energy_kwh, curve.val_acc1, marker=MARKERS.get(variant, "P"), linestyle=style,
                          color=colours.get(model, "black"), label=f"{curve.label} ({curve.run_id[:8]}{suffix})", **hollow)
        lines.append(line)
    ax.set_xlabel("cumulative train + validation energy (kWh, CodeCarbon)")
    ax.set_ylabel("validation accuracy top-1 (%)")
    ax.set_title("Accuracy bought per kWh over training")
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no per-epoch history to plot", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return len(lines)
