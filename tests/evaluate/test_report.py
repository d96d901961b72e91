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
    assert page.count("data:image/png;base64,") == 3  # one spectrogram figure per example
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
