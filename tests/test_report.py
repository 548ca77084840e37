"""The run report: report.html beside report.json, rendered in a real headless browser."""

import re
import shutil
import subprocess

import pytest

from conftest import demo_job
from lakefill.pipelines.cli import main
from lakefill.pipelines.local_job import run_local

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
    # confidence, missingness, numbers, categories, error reduction of the re-worked rows
    assert re.search(r'data-plots="(\d+)"', text).group(1) == "5"
    assert text.count('src="data:image/png;base64,') == 5
    assert "Error reduction of the re-worked rows" in text and "reverse training check" in text


def test_the_refinement_check_in_the_report_matches_the_rows(run):
    """The check columns: set for the re-worked rows only; a kept refinement lowered the held-back error."""
    import numpy as np
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    from lakefill.pipelines.report import refine_check

    t = DeltaTable(run.table).to_pyarrow_table()
    before = t.column("_lf_check_before").to_numpy(zero_copy_only=False)
    after = t.column("_lf_check_after").to_numpy(zero_copy_only=False)
    method = np.asarray(t.column("_lf_method").to_pylist())
    conf = t.column("_lf_confidence").to_numpy()
    checked = ~np.isnan(before)
    assert checked.any() and (conf[checked] < 0.15).all()  # only rows under the threshold are re-worked
    assert (after[method == "reverse"] < before[method == "reverse"]).all()
    assert (after[checked & (method != "reverse")] == before[checked & (method != "reverse")]).all()
    check = refine_check(t)
    assert check["rows_checked"] == int(checked.sum()) and check["rows_refinement_kept"] == int((method == "reverse").sum())
    assert check["mean_error_after"] <= check["mean_error_before"]
    assert pc.sum(pc.is_null(t.column("_lf_check_before"))).as_py() == t.num_rows - int(checked.sum())


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
    assert 'data-plots-shown="5"' in body, body
