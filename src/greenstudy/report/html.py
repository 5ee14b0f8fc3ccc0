"""The report as people read it: the formatted table (markdown for the terminal and comparison.md) and one
self-contained HTML page with the table, the measurement set-ups, the pictures and the skipped runs."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from greenstudy.report.comparison import ENERGY_NOTE, HARDWARE_TAGS, SKIPPED_COLUMNS, RunPoint, Skipped, aggregate_note

DISPLAY_COLUMNS = (  # (header, column, format) of the human-readable table
    ("model", "model", "{}"), ("variant", "variant", "{}"), ("config", "config", "{}"), ("runs", "n_runs", "{}"),
    ("test acc@1 %", "test_acc1", "{:.2f}"), ("lifecycle kWh", "lifecycle_energy_kwh", "{:.3g}"),
    ("own kWh", "own_energy_kwh", "{:.3g}"), ("emissions kg", "lifecycle_emissions_kg", "{:.3g}"),
    ("infer Wh/1k img", "infer_energy_wh_per_1k_images", "{:.3g}"), ("infer img/s", "infer_images_per_second", "{:.0f}"),
    ("params M", "params", "{:.2f}"), ("MACs M", "macs", "{:.1f}"), ("size MB", "model_size_mb", "{:.2f}"),
    ("Δacc pts", "test_acc1_delta_vs_baseline", "{:+.2f}"), ("energy ×", "energy_vs_baseline", "{:.2f}"),
    ("own energy ×", "own_energy_vs_baseline", "{:.2f}"), ("infer energy ×", "infer_energy_vs_baseline", "{:.2f}"),
    ("infer speed ×", "infer_speed_vs_baseline", "{:.2f}"), ("MACs ×", "macs_vs_baseline", "{:.2f}"),
    ("size ×", "model_size_vs_baseline", "{:.2f}"),
)
_SCALE = {"params": 1e-6, "macs": 1e-6}


def display_table(rows: Sequence[dict[str, object]]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of the comparison table (params and MACs in millions); the config
    column only where some row has one."""
    columns = [c for c in DISPLAY_COLUMNS if c[1] != "config" or any(row.get("config") for row in rows)]
    headers = [header for header, _, _ in columns]
    cells = []
    for row in rows:
        line = []
        for _, column, fmt in columns:
            value = row.get(column, "")
            if isinstance(value, float | int) and not isinstance(value, bool):
                value = value * _SCALE.get(column, 1)
            line.append("–" if value == "" else fmt.format(value))
        cells.append(line)
    return headers, cells


def markdown_table(rows: Sequence[dict[str, object]], aggregate: str) -> str:
    headers, cells = display_table(rows)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    return "\n".join(lines) + f"\n\n{aggregate_note(aggregate)} {ENERGY_NOTE}\n"


def hardware_rows(points: Sequence[RunPoint]) -> list[dict[str, object]]:
    """The distinct measurement set-ups (hardware tags and energy method) and how many runs used each."""
    seen: dict[tuple[str, ...], int] = {}
    for point in points:
        key = tuple(point.tags.get(tag, "unknown") for tag in HARDWARE_TAGS)
        seen[key] = seen.get(key, 0) + 1
    return [{**dict(zip(HARDWARE_TAGS, key, strict=True)), "runs": n} for key, n in seen.items()]


def _html_table(headers: Sequence[str], cells: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in line) + "</tr>" for line in cells)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def render_report_html(title: str, message: str, rows: Sequence[dict[str, object]], points: Sequence[RunPoint],
                       skipped: Sequence[Skipped], aggregate: str, pictures: dict[str, Path],
                       registry_lines: Sequence[str] = (), sections: Sequence[str] = ()) -> str:
    """One self-contained page: message, table, set-ups, pictures (base64), extra `sections` (ready HTML:
    where and when to train), registry, skipped runs."""
    headers, cells = display_table(rows)
    setups = hardware_rows(points)
    estimate = any("estimate" in str(s["energy_method"]) for s in setups)
    parts = [
        f"<h1>greenstudy report: {html.escape(title)}</h1>",
        f"<p class='msg'>{html.escape(message)}</p>",
        "<h2>Comparison</h2>",
        f"<p>{html.escape(aggregate_note(aggregate))} {html.escape(ENERGY_NOTE)} Exact values: comparison.csv.</p>",
        _html_table(headers, cells) if rows else "<p>No finished runs with the full metric contract.</p>",
        "<h2>How the energy was measured</h2>",
        _html_table([*HARDWARE_TAGS, "runs"], [list(s.values()) for s in setups]) if setups else "<p>–</p>",
    ]
    if estimate:
        parts.append("<p class='warn'>Some energy figures are CodeCarbon <b>estimates</b> (no RAPL/NVML counters): "
                     "compare runs measured the same way only.</p>")
    parts.append("<h2>Pictures</h2><p>Interactive version: accuracy_vs_energy.html (next to this page).</p>")
    parts += [_img(path, alt) for alt, path in pictures.items()]
    parts += list(sections)
    if registry_lines:
        parts.append("<h2>Model Registry</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in registry_lines)
                     + "</ul>")
    for heading, listed in (("In progress (not compared until they end)", [s for s in skipped if s.in_progress]),
                            ("Skipped runs", [s for s in skipped if not s.in_progress])):
        if listed or not heading.startswith("In progress"):
            parts.append(f"<h2>{heading}</h2>")
            parts.append(_html_table(SKIPPED_COLUMNS, [[s.run_id, s.run_name, s.model, s.variant, s.status, s.reason]
                                                       for s in listed]) if listed else "<p>none</p>")
    parts.append("<h2>Runs reported</h2>")
    parts.append(_html_table(("run_id", "run_name", "model", "variant"), [[p.run_id, p.name, p.model, p.variant] for p in points]))
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px} table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px} th{background:#f3f3f3}"
             "img{max-width:100%} .warn{color:#a40} .msg{font-weight:bold}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>greenstudy report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
