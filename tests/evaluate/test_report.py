"""The HTML/Markdown report: self-contained, complete, and rendered by a real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from miipher2.evaluate.baseline import RestorerEnhancer
from miipher2.evaluate.report import write_report
from miipher2.evaluate.run import ScoringConfig, evaluate_systems
from tests.evaluate.fakes import Upsampler

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def report(eval_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = evaluate_systems([RestorerEnhancer(Upsampler(), name="miipher2")], eval_root, "test", out,
                              config=ScoringConfig(("intrusive",)), main_system="miipher2")
    html_path, markdown_path = write_report(result, out)
    return html_path, markdown_path


def test_report_is_self_contained_and_complete(report):
    html_path, markdown_path = report
    page = html_path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    for heading in ("Overall", "By language", "By degradation type", "Examples"):
        assert f"<h2>{heading}</h2>" in page
    assert page.count("data:image/png;base64,") == 4  # the headline chart, one spectrogram figure per example
    assert page.index('<img class="chart"') < page.index("<h2>Overall</h2>"), "the report opens with the chart"
    assert (html_path.parent / "headline.png").read_bytes().startswith(b"\x89PNG")
    assert page.count("data:audio/wav;base64,") == 9  # clean / degraded / restored for each
    assert not re.search(r'(src|href)="(?!data:)', page), "everything must be inline"
    assert "PESQ (WB) ↑" in page and "LSD (dB) ↓" in page and 'class="main"' in page
    markdown = markdown_path.read_text()
    assert markdown.startswith("# Miipher-2 evaluation") and "| **miipher2** |" in markdown


def _chromium(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", *extra, url],
        capture_output=True, text=True, timeout=120)


def _console_messages(stderr: str) -> list[str]:
    # Chromium logs every console message and uncaught exception as "...:CONSOLE:<line>] message"
    # (without its level). The report has no scripts, so any console message at all is a fault.
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
def test_chromium_catches_console_errors_at_all(tmp_path):
    """Control: the console check below is able to fail."""
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>console.error('boom'); undefinedFunction();</script></body></html>")
    messages = _console_messages(_chromium(page.as_uri(), tmp_path, "--dump-dom").stderr)
    assert any("boom" in m for m in messages) and any("Uncaught ReferenceError" in m for m in messages)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
def test_report_renders_in_headless_chromium_without_console_messages(report, tmp_path):
    from PIL import Image

    html_path, _ = report
    shot = tmp_path / "report.png"
    run = _chromium(html_path.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1280,2200")
    assert shot.is_file(), run.stderr[-2000:]
    assert not _console_messages(run.stderr)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 10, "the screenshot is blank"
    # Spectrograms are dark images on a white page: a sizeable dark area means they rendered.
    assert (pixels < 60).mean() > 0.02
    dom = _chromium(html_path.as_uri(), tmp_path, "--dump-dom")
    assert "<h2>Examples</h2>" in dom.stdout and not _console_messages(dom.stderr)


def test_headline_chart_shows_each_systems_mean_and_interval():
    import matplotlib.pyplot as plt
    import pandas as pd

    from miipher2.evaluate.report import headline_chart_png, headline_figure

    rows = [("miipher2", "dnsmos_ovrl", 3.1, 2.9, 3.3), ("degraded", "dnsmos_ovrl", 2.2, 2.0, 2.5),
            ("miipher2", "wer", 0.2, 0.1, 0.35), ("degraded", "wer", float("nan"), float("nan"), float("nan")),
            ("miipher2", "lsd", 9.0, 8.0, 10.0)]
    aggregates = pd.DataFrame([{"system": s, "group_by": "all", "group": "all", "metric": m, "n": 10, "mean": mean,
                                "ci_low": lo, "ci_high": hi} for s, m, mean, lo, hi in rows])
    fig = headline_figure(aggregates, ["miipher2", "degraded"], "miipher2")
    ovrl, wer = fig.axes  # headline metrics only (no LSD), in headline order
    assert ovrl.get_title() == "DNSMOS OVRL ↑" and wer.get_title() == "WER ↓"
    assert [t.get_text() for t in ovrl.get_yticklabels()] == ["degraded", "miipher2"]  # first system on top

    def drawn(ax):  # (y, mean, interval low, interval high) of each point and its error bar
        points = [(line.get_ydata()[0], line.get_xdata()[0]) for line in ax.lines if line.get_marker() == "o"]
        bars = [segment for collection in ax.collections for segment in collection.get_segments()]
        return np.array(sorted((y, x, bar[0][0], bar[1][0]) for (y, x), bar in zip(points, bars)))

    np.testing.assert_allclose(drawn(ovrl), [(0, 2.2, 2.0, 2.5), (1, 3.1, 2.9, 3.3)])
    np.testing.assert_allclose(drawn(wer), [(1, 0.2, 0.1, 0.35)])  # NaN (not measured) is left out
    plt.close(fig)
    assert headline_chart_png(aggregates[aggregates["metric"] == "lsd"], ["miipher2"]) is None
