"""The run report: report.html beside report.json, rendered in a real headless browser."""

import re
import shutil
import subprocess

import pytest

from conftest import demo_job
from pipelines.cli import main
from pipelines.local_job import run_local

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(demo_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    return run_local(demo_job(tmp, demo_model, run_id="rep"), log=lambda *_: None)


def test_every_run_writes_report_html_with_counts_and_plots(run):
    from pathlib import Path

    page = Path(run.report).with_name("report.html")
    text = page.read_text()
    assert "lakefill run <code>rep</code>" in text and "ragged row" in text
    assert re.search(r'data-plots="(\d+)"', text).group(1) == "4"  # confidence, missingness, numbers, categories
    assert text.count('src="data:image/png;base64,') == 4


def test_lakefill_report_prints_the_counts_and_the_page(run, capsys):
    from pathlib import Path

    assert main(["report", str(Path(run.report).parent)]) == 0
    out = capsys.readouterr().out
    assert "602 rows in, 600 written, 2 quarantined" in out and "report.html" in out


def test_report_loads_in_headless_chromium_without_errors_and_shows_its_plots(run):
    from pathlib import Path

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "Debian's chromium is needed for this test (.ci/run installs it: apt-get install chromium)"
    page = Path(run.report).with_name("report.html")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-errors="0"' in body, body
    assert 'data-plots-shown="4"' in body, body
