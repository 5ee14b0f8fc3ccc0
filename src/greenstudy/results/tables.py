"""The pure part of `results/`: energy to a validation accuracy, the tables of results/README.md, the poster
comparison and the commands rebuilt from the runs' params. No MLflow here: everything takes RunPoints and their
per-epoch histories (greenstudy.results.build reads them) and returns text."""

from __future__ import annotations

import argparse
import datetime as dt
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from urllib.parse import urlsplit, urlunsplit

from greenstudy.report.comparison import RunPoint

THRESHOLDS = (40.0, 52.5)  # validation top-1 (%): a milestone and the poster's ResNet-18 figure
NOT_REACHED = "not reached"
LIFECYCLE_MARK = "†"
POSTER_EPOCHS = 20


@dataclass(frozen=True)
class PosterRow:
    """One model as the poster reports it (2x T4)."""

    model: str
    top1: str
    time: str
    kg_co2: str
    hardware: str = "2x NVIDIA T4"


POSTER = (
    PosterRow("resnet18", "52.5 %", "~11 min", "0.010"),
    PosterRow("efficientnet_b0", "99.8 % (split not stated; see caveats)", "~2.8 h", "0.103"),
)


@dataclass
class RunView:
    """A run with its per-epoch histories (step = epoch), as read from MLflow."""

    point: RunPoint
    val_acc1: dict[int, float] = field(default_factory=dict)
    cumulative_kwh: dict[int, float] = field(default_factory=dict)
    train_acc1: dict[int, float] = field(default_factory=dict)
    config: str = ""  # what tells this row from another of the same model and variant (comparison_rows' config)

    @property
    def metrics(self) -> dict[str, float]:
        return self.point.metrics


# ---------------------------------------------------------------- formatting


def wh(kwh: float | None) -> str:
    """kWh shown as Wh, 4 significant digits."""
    return "–" if kwh is None or not math.isfinite(kwh) else f"{kwh * 1000:.4g}"


def pct(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.2f}"


def num(value: float | None, spec: str = ".4g", scale: float = 1.0) -> str:
    return "–" if value is None or not math.isfinite(value) else format(value * scale, spec)


def minutes(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def safe_uri(uri: str) -> str:
    """The tracking URI without any user:password part."""
    parts = urlsplit(uri)
    if parts.password or parts.username:
        return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
    return uri


def when(ms: int | None) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if ms else "?"


def make_command(experiments: Sequence[str], study_name: str, storage: str) -> str:
    """The `make results` line that regenerates this folder (a storage shown without credentials)."""
    extra = (f" STUDY={shlex.quote(study_name)}" if study_name else "") + (f" STORAGE={shlex.quote(safe_uri(storage))}" if storage else "")
    return f"make results EXPERIMENT={shlex.quote(','.join(experiments))}{extra}"


def markdown(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table ('|' inside cells escaped)."""
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    return "\n".join([*lines, *("| " + " | ".join(map(cell, row)) + " |" for row in rows)]) + "\n"


# ---------------------------------------------------------------- energy to a validation accuracy


def first_epoch_at(val_acc1: Mapping[int, float], threshold: float) -> int | None:
    """The first epoch whose val_acc1 >= threshold (None when none does)."""
    return next((step for step in sorted(val_acc1) if val_acc1[step] >= threshold), None)


def energy_to(view: RunView, threshold: float) -> float | None:
    """cumulative_energy_kwh (train + val) at the first epoch reaching `threshold`, plus the upstream
    energy for a derived run with epochs of its own (pruned: lifecycle); None when not reached."""
    epoch = first_epoch_at(view.val_acc1, threshold)
    if epoch is None or epoch not in view.cumulative_kwh:
        return None
    return view.cumulative_kwh[epoch] + view.metrics.get("upstream_energy_kwh", 0.0)


def energy_to_cell(view: RunView, threshold: float) -> str:
    """The table cell: Wh and the epoch, 'not reached' (with the best val_acc1), or why there is none."""
    if not view.val_acc1:
        source = view.point.tags.get("derived_from", "")
        return "n/a: no epochs of its own" + (f" (made from {source})" if source else "")
    epoch = first_epoch_at(view.val_acc1, threshold)
    if epoch is None:
        return f"{NOT_REACHED} (best {pct(max(view.val_acc1.values()))} %)"
    upstream = view.metrics.get("upstream_energy_kwh", 0.0)
    mark = f"{LIFECYCLE_MARK} incl. upstream {wh(upstream)}" if upstream else ""
    return f"{wh(energy_to(view, threshold))} (epoch {epoch}{mark})"


# ---------------------------------------------------------------- the variant table


VARIANT_HEADERS = (
    "variant", "run id", "epochs", "test top-1 %", "test top-5 %", "lifecycle Wh", "own Wh",
    *(f"Wh to {t:g} % val" for t in THRESHOLDS), "infer Wh/1k img", "infer img/s",
    "fp32 same CPU Wh/1k img · img/s", "params M", "MACs M", "size MB",
)


def epochs_cell(view: RunView) -> str:
    """Epochs run (of those scheduled), fine-tune epochs for pruned, none for quantized."""
    m, params, variant = view.metrics, view.point.params, view.point.variant
    run = m.get("epochs_run")
    if variant == "quantized" or run is None:
        return "0 (post-training int8)" if variant == "quantized" else params.get("epochs", "–")
    if variant == "pruned":
        text = f"{run:.0f} fine-tune"
    else:
        planned = params.get("epochs", "")
        text = f"{run:.0f}" + (f" of {planned}" if planned and float(planned) != run else "")
    stopped = view.point.tags.get("stopped_early")
    return text + (f" (stopped: {stopped})" if stopped else "")


def variant_row(view: RunView) -> list[str]:
    m = view.metrics
    fp32 = (f"{num(m.get('fp32_cpu_infer_energy_wh_per_1k_images'))} · {num(m.get('fp32_cpu_infer_images_per_second'), '.1f')}"
            if "fp32_cpu_infer_images_per_second" in m else "")
    return [
        view.point.variant + (f" ({view.config})" if view.config else ""), view.point.run_id, epochs_cell(view),
        pct(m.get("test_acc1")), pct(m.get("test_acc5")),
        wh(m.get("lifecycle_energy_kwh", m.get("energy_kwh"))), wh(m.get("own_energy_kwh", m.get("energy_kwh"))),
        *(energy_to_cell(view, t) for t in THRESHOLDS), num(m.get("infer_energy_wh_per_1k_images")),
        num(m.get("infer_images_per_second"), ".1f"), fp32, num(m.get("params"), ".3f", 1e-6),
        num(m.get("macs"), ".1f", 1e-6), num(m.get("model_size_mb"), ".2f"),
    ]


def variant_table(views: Sequence[RunView]) -> str:
    return markdown(VARIANT_HEADERS, [variant_row(v) for v in views])


# ---------------------------------------------------------------- poster vs greenstudy


POSTER_HEADERS = ("source", "model", "variant", "epochs", "top-1", f"val top-1 at epoch {POSTER_EPOCHS}",
                  "train top-1 (last epoch)", "training time", "kg CO2eq", "hardware", "run id")


def hardware_text(tags: Mapping[str, str]) -> str:
    if tags.get("device") == "cuda":
        return f"{tags.get('gpu_model', 'GPU')} (CUDA), CPU {tags.get('cpu_model', '?')}"
    return f"CPU {tags.get('cpu_model', '?')} ({tags.get('cpu_capability', '?')}), no GPU"


def poster_rows(views: Sequence[RunView]) -> list[list[str]]:
    """Per poster model: the poster's row, then greenstudy's baseline and amp runs of that model."""
    rows: list[list[str]] = []
    for poster in POSTER:
        rows.append(["poster", poster.model, "–", str(POSTER_EPOCHS), poster.top1, "–", "–", poster.time, poster.kg_co2,
                     poster.hardware, "–"])
        ours = [v for v in views if v.point.model == poster.model and v.point.variant in ("baseline", "amp")]
        for v in ours:
            m = v.metrics
            last = v.train_acc1[max(v.train_acc1)] if v.train_acc1 else None
            rows.append(["greenstudy", poster.model, v.point.variant, f"{m.get('epochs_run', math.nan):.0f}",
                         f"{pct(m.get('test_acc1'))} % (held-out test)",
                         f"{pct(v.val_acc1[POSTER_EPOCHS])} %" if POSTER_EPOCHS in v.val_acc1 else "not reached",
                         f"{pct(last)} %" if last is not None else "–",
                         minutes(m.get("train_seconds")), num(m.get("emissions_kg"), ".3g"), hardware_text(v.point.tags),
                         v.point.run_id])
        if not ours:
            rows.append(["greenstudy", poster.model, "–", "–", "no finished baseline/amp run in this experiment", "–", "–", "–",
                         "–", "–", "–"])
    return rows


def poster_caveats(views: Sequence[RunView]) -> list[str]:
    """What the side-by-side can and cannot say, from the runs' own tags and params."""
    ours = [v for v in views if v.point.variant in ("baseline", "amp")]
    notes = ["Hardware: the poster trained on 2x NVIDIA T4; greenstudy's rows say where each run trained "
             "(a CPU run is not a like-for-like time or energy comparison with two GPUs)."]
    methods = sorted({v.point.tags.get("energy_method", "unknown") for v in ours})
    if any("estimate" in m for m in methods):
        notes.append(f"Energy method of these runs: {'; '.join(methods)}. Parts marked `estimate` are CodeCarbon "
                     "estimates (no RAPL/NVML counter), not measurements: there kWh and kg CO2eq are time x an assumed power.")
    elif methods:
        notes.append(f"Energy method of these runs: {'; '.join(methods)}. The poster does not say how it measured.")
    countries = sorted({v.point.params.get("country_iso_code", "?") for v in ours})
    notes.append(f"kg CO2eq = the run's own energy (train + val + setup + test) x the grid intensity of "
                 f"{', '.join(countries) or '?'} (CodeCarbon, offline); the poster's grid and scope are not stated. "
                 "Training time = the training phases only (validation, test and inference excluded).")
    for v in ours:
        run = v.metrics.get("epochs_run", 0)
        if run < POSTER_EPOCHS:
            notes.append(f"{v.point.label} ({v.point.run_id}) ran {run:.0f} epochs, not the poster's {POSTER_EPOCHS}: "
                         "its accuracy is not the poster's 20-epoch figure.")
        subset = v.point.params.get("train_subset", "0")
        if subset not in ("0", "", "None"):
            notes.append(f"{v.point.label} ({v.point.run_id}) trained on a subset of {subset} images, not the full "
                         "45,000: not comparable with the poster.")
        tested = v.point.params.get("test_subset", "0")
        if tested not in ("0", "", "None"):
            notes.append(f"{v.point.label} ({v.point.run_id}) was tested on {tested} of the 10,000 test images.")
    notes.append("\"99.8 %\" for EfficientNet-B0: a held-out CIFAR-100 top-1 of 99.8 % would be far above the best "
                 "published results of any model, let alone EfficientNet-B0 after 20 epochs; it is most likely a training "
                 "accuracy (compare the train top-1 column, measured on augmented training batches) or a score on images "
                 "the model had seen. greenstudy's top-1 is always measured on the held-out test split, never trained on.")
    return notes


# ---------------------------------------------------------------- commands rebuilt from params


def data_dir_of(tags: Mapping[str, str]) -> str:
    """The folder holding the CIFAR folder a run read, from its data_source tag ('' when unknown): where
    the data was extracted, which a later run finds too."""
    source = tags.get("data_source", "")
    return str(PurePath(source.split(":", 1)[1]).parent) if ":" in source else ""


def as_given(value: str) -> str:
    """A param value as the user gave it: `mlflow run` logs an empty string parameter as `''`."""
    return "" if value in ("''", '""') else value


def _same(value: str, default: object) -> bool:
    value = as_given(value)
    if default is None:
        return value.strip().lower() in ("", "none", "null", "0", "0.0", "auto")
    if isinstance(default, bool):
        return value.strip().lower() == str(default).lower()
    try:
        return math.isclose(float(value), float(default))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return value == str(default)


def command_line(parser: argparse.ArgumentParser, params: Mapping[str, str], experiment: str, entry: str = "main",
                 always: Sequence[str] = ("model", "variants", "epochs")) -> str:
    """`mlflow run . --env-manager local [-e entry] --experiment-name E -P k=v ...`: every entry-point
    parameter the runs logged with a non-default value (plus `always`), in the parser's order."""
    parts = ["mlflow run . --env-manager local"] + ([f"-e {entry}"] if entry != "main" else [])
    parts.append(f"--experiment-name {shlex.quote(experiment)}")
    for action in parser._actions:  # noqa: SLF001 - the parser is the one definition of the parameters
        name = action.dest
        if name == "help" or name not in params or (name not in always and _same(params[name], action.default)):
            continue
        parts.append(f"-P {name}={shlex.quote(as_given(params[name]))}")
    return " ".join(parts)
