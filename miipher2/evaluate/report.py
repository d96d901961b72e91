"""The evaluation report: one self-contained HTML file (plus a Markdown summary for KFP).

Everything is inline — CSS, spectrograms as base64 PNG, audio as base64 WAV data URIs — so the
file can be attached to an MLflow run, shown by the KFP UI or mailed, and still work offline.
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from miipher2.audio import read_audio
from miipher2.evaluate.metrics import METRIC_RATE, REPORTED_METRICS
from miipher2.files import atomic_write_bytes, atomic_write_text

N_EXAMPLES = 3
EXAMPLE_SECONDS = 8.0
HTML_FILE, MARKDOWN_FILE, CHART_FILE = "report.html", "report.md", "headline.png"
# The report opens with these (the paper's headline numbers and the promotion gate's rules).
HEADLINE_METRICS = ("dnsmos_ovrl", "wer", "speaker_similarity", "pesq")

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #1d232a; background: #fff; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #dde; }
.meta { color: #5a6570; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .85rem; }
th, td { border: 1px solid #d4d9de; padding: .25rem .5rem; text-align: right; white-space: nowrap; }
th { background: #eef2f6; } td.key { text-align: left; font-weight: 600; }
tr.main td { background: #fff8e1; }
.ci { color: #6b7680; font-size: .75rem; }
.example { margin: 1.2rem 0; padding: .8rem; border: 1px solid #e3e7eb; border-radius: 6px; }
.players { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: .5rem; }
.players figure { margin: 0; } .players figcaption { font-size: .8rem; color: #5a6570; }
img.spec, img.chart { max-width: 100%; }
.note { color: #8a5a00; }
"""


def write_report(results, out_dir: str | Path) -> tuple[Path, Path]:
    """Write report.html, report.md and the headline chart (headline.png, when there is one) for an
    `EvaluationResult`; returns the reports' paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, markdown_path = out_dir / HTML_FILE, out_dir / MARKDOWN_FILE
    chart = headline_chart_png(results.aggregates, results.systems, results.main_system)
    if chart is not None:
        atomic_write_bytes(out_dir / CHART_FILE, chart)
    atomic_write_text(html_path, render_html(results, chart))
    atomic_write_text(markdown_path, render_markdown(results))
    return html_path, markdown_path


# ---- HTML ------------------------------------------------------------------------------------


def render_html(results, chart: bytes | None = None) -> str:
    """The report; `chart` is the headline chart's PNG (drawn here when not given)."""
    table, aggregates = results.table, results.aggregates
    n_utts = table["utt_id"].nunique()
    if chart is None:
        chart = headline_chart_png(aggregates, results.systems, results.main_system)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(results.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(results.title)}</h1>",
        f'<p class="meta">{n_utts} utterances · systems: {_e(", ".join(results.systems))} · '
        f'generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · 95% bootstrap confidence intervals</p>',
    ]
    if chart is not None:
        parts.append(f'<img class="chart" alt="headline metrics per system, mean with 95% interval" '
                     f'src="data:image/png;base64,{base64.b64encode(chart).decode("ascii")}">')
    parts += ["<h2>Overall</h2>", _aggregate_table(aggregates, results, "all")]
    for by, heading in (("language", "By language"), ("degradation", "By degradation type")):
        if (aggregates["group_by"] == by).any():
            parts += [f"<h2>{heading}</h2>", _aggregate_table(aggregates, results, by)]
    parts += _notes(table)
    examples = pick_examples(table, results.systems)
    if examples:
        parts.append("<h2>Examples</h2>")
        parts += [_example_html(table, utt_id, results.systems) for utt_id in examples]
    parts.append("</body></html>")
    return "\n".join(parts)


def _aggregate_table(aggregates: pd.DataFrame, results, group_by: str) -> str:
    part = aggregates[aggregates["group_by"] == group_by]
    metrics = [m for m in results.metrics if m in set(part["metric"])]
    header = "".join(f"<th>{_e(_heading(m))}</th>" for m in metrics)
    group_header = "" if group_by == "all" else f"<th>{_e(group_by)}</th>"
    rows = []
    groups = list(dict.fromkeys(part["group"])) if group_by != "all" else ["all"]
    for group in groups:
        for system in results.systems:
            cells = part[(part["group"] == group) & (part["system"] == system)].set_index("metric")
            if cells.empty:
                continue
            values = "".join(f"<td>{_cell_html(cells, m)}</td>" for m in metrics)
            css = ' class="main"' if system == results.main_system else ""
            group_cell = "" if group_by == "all" else f'<td class="key">{_e(group)}</td>'
            rows.append(f'<tr{css}>{group_cell}<td class="key">{_e(system)}</td>{values}</tr>')
    return (f'<div class="scroll"><table><thead><tr>{group_header}<th>system</th>{header}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _heading(metric: str) -> str:
    info = REPORTED_METRICS[metric]
    return f"{info.label} {'↑' if info.higher_is_better else '↓'}"


def _cell_html(cells: pd.DataFrame, metric: str) -> str:
    if metric not in cells.index or not math.isfinite(cells.at[metric, "mean"]):
        return "n/a"
    row = cells.loc[metric]
    return (f"{_fmt(row['mean'])}<br><span class=\"ci\">[{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]"
            f" n={int(row['n'])}</span>")


def _notes(table: pd.DataFrame) -> list[str]:
    notes = []
    if "asr_note" in table:
        for note, count in table["asr_note"].replace("", np.nan).dropna().value_counts().items():
            notes.append(f"WER/CER not available for {count} rows: {note}")
    if "error" in table:
        failed = table[table["error"].notna()]
        for row in failed.head(20).itertuples():
            notes.append(f"{row.system} / {row.utt_id}: {row.error}")
        if len(failed) > 20:
            notes.append(f"... and {len(failed) - 20} more failed rows (see utterances.csv)")
    if not notes:
        return []
    return ["<h2>Notes</h2><ul>"] + [f'<li class="note">{_e(n)}</li>' for n in notes] + ["</ul>"]


def pick_examples(table: pd.DataFrame, systems: list[str], n: int = N_EXAMPLES) -> list[str]:
    """The first `n` utterances, one per language where possible, with audio for every system."""
    ok = table[table["audio_file"].notna() & table.get("error", pd.Series(None, index=table.index)).isna()]
    complete = ok.groupby("utt_id", sort=False)["system"].nunique()
    candidates = [u for u in complete.index if complete[u] == len(systems)]
    languages = table.drop_duplicates("utt_id").set_index("utt_id")["language"] if "language" in table else None
    chosen, seen = [], set()
    for utt_id in candidates:  # first pass: one per language
        lang = languages[utt_id] if languages is not None else None
        if lang not in seen:
            chosen.append(utt_id)
            seen.add(lang)
    chosen += [u for u in candidates if u not in chosen]
    return chosen[:n]


def _example_html(table: pd.DataFrame, utt_id: str, systems: list[str]) -> str:
    rows = table[table["utt_id"] == utt_id].set_index("system")
    waves = {s: read_audio(rows.at[s, "audio_file"], sample_rate=METRIC_RATE)[0][: int(EXAMPLE_SECONDS * METRIC_RATE)]
             for s in systems}
    meta = rows.iloc[0]
    effects = meta.get("degradation_types", "")
    effects = " + ".join(effects) if isinstance(effects, list) else effects
    caption = f"{utt_id} · {meta.get('language', '')} · {effects}"
    transcript = f'<p class="meta">“{_e(meta.get("transcript", ""))}”</p>' if meta.get("transcript") else ""
    players = "".join(
        f'<figure><figcaption>{_e(s)}</figcaption><audio controls preload="none" src="{_wav_data_uri(w)}"></audio></figure>'
        for s, w in waves.items())
    image = f'<img class="spec" alt="spectrograms of {_e(utt_id)}" src="data:image/png;base64,{spectrogram_png(waves)}">'
    return f'<div class="example"><h3>{_e(caption)}</h3>{transcript}{image}<div class="players">{players}</div></div>'


def headline_chart_png(aggregates: pd.DataFrame, systems: list[str], main_system: str | None = None) -> bytes | None:
    """`headline_figure` as PNG bytes; None when no headline metric was measured."""
    import matplotlib.pyplot as plt

    fig = headline_figure(aggregates, systems, main_system)
    if fig is None:
        return None
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def headline_figure(aggregates: pd.DataFrame, systems: list[str], main_system: str | None = None):
    """One panel per headline metric: each system's mean with its 95% interval (the main system in red)."""
    overall = aggregates[aggregates["group_by"] == "all"]
    measured = overall[np.isfinite(overall["mean"].astype(float))]
    metrics = [m for m in HEADLINE_METRICS if m in set(measured["metric"])]
    if not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [s for s in systems if s in set(measured["system"])][::-1]  # first system on top
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 0.45 * len(order) + 1.3), sharey=True,
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = measured[measured["metric"] == metric].set_index("system")
        for y, system in enumerate(order):
            if system not in rows.index:
                continue
            row = rows.loc[system]
            mean, low, high = float(row["mean"]), float(row["ci_low"]), float(row["ci_high"])
            color = "#c0392b" if system == main_system else "#34495e"
            ax.errorbar(mean, y, xerr=[[max(mean - low, 0.0)], [max(high - mean, 0.0)]], fmt="o", color=color,
                        capsize=3, markersize=5)
            ax.annotate(_fmt(mean), (mean, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7,
                        color=color)
        info = REPORTED_METRICS[metric]
        ax.set_title(f"{info.label} {'↑' if info.higher_is_better else '↓'}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
        ax.margins(y=0.25)
    axes[0][0].set_yticks(range(len(order)), order)
    fig.tight_layout()
    return fig


def spectrogram_png(waves: dict[str, np.ndarray], rate: int = METRIC_RATE) -> str:
    """Log-magnitude spectrograms, one panel per system, as base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(waves), figsize=(3.2 * len(waves), 2.6), sharey=True, squeeze=False)
    for ax, (name, wave) in zip(axes[0], waves.items()):
        ax.specgram(np.asarray(wave, dtype=np.float64) + 1e-9, NFFT=512, Fs=rate, noverlap=384, cmap="magma",
                    vmin=-130, vmax=-20)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("s", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("Hz", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _wav_data_uri(wave: np.ndarray, rate: int = METRIC_RATE) -> str:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wave, -1, 1), rate, subtype="PCM_16", format="WAV")
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ---- Markdown --------------------------------------------------------------------------------


def render_markdown(results) -> str:
    overall = results.aggregates[results.aggregates["group_by"] == "all"]
    metrics = [m for m in results.metrics if m in set(overall["metric"])]
    lines = [f"# {results.title}", "",
             f"{results.table['utt_id'].nunique()} utterances; mean [95% bootstrap CI].", "",
             "| system | " + " | ".join(_heading(m) for m in metrics) + " |",
             "|---" * (len(metrics) + 1) + "|"]
    for system in results.systems:
        cells = overall[overall["system"] == system].set_index("metric")
        values = []
        for m in metrics:
            if m in cells.index and math.isfinite(cells.at[m, "mean"]):
                values.append(f"{_fmt(cells.at[m, 'mean'])} [{_fmt(cells.at[m, 'ci_low'])}, {_fmt(cells.at[m, 'ci_high'])}]")
            else:
                values.append("n/a")
        name = f"**{system}**" if system == results.main_system else system
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    lines += ["", "Full report with per-language and per-degradation tables, spectrograms and audio: report.html."]
    return "\n".join(lines) + "\n"


# ---- helpers ---------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def _e(text) -> str:
    return html.escape(str(text))
