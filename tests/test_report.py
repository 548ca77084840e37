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


def test_the_report_counts_from_the_run_and_plots_a_bounded_sample(run, monkeypatch):
    """Per-column shares come from the finish step's counters (equal to counting the table);
    the value plots read at most SAMPLE_ROWS rows; the refinement check reads every re-worked row."""
    import json
    from pathlib import Path

    from deltalake import DeltaTable

    from lakefill.pipelines import report as rep

    run_dir = Path(run.report).parent
    report = json.loads((run_dir / "report.json").read_text())
    table = DeltaTable(run.table).to_pyarrow_table()
    assert report["metrics"]["written_rows"] == table.num_rows == report["counts"]["rows_written"]
    assert report["column_shares"] == rep.column_shares(table, report) != {}
    # a report of a run made before the counters: counted on the table's columns, the same
    old = {**report, "metrics": {k: v for k, v in report["metrics"].items() if not k.startswith("written_")}}
    assert rep.column_shares_of_run(old) == report["column_shares"]
    whole = rep.refine_check(table)
    seen = []
    real = rep._run_rows

    def spy(*args, **kw):
        out = real(*args, **kw)
        seen.append((kw.get("limit"), kw.get("columns"), None if out is None else out.num_rows))
        return out

    monkeypatch.setattr(rep, "SAMPLE_ROWS", 40)
    monkeypatch.setattr(rep, "_run_rows", spy)
    text = rep.render_report(run_dir).read_text()
    assert f"the run's first 40 of {table.num_rows:,} rows" in text
    assert json.loads((run_dir / "report.json").read_text())["column_shares"] == report["column_shares"]
    # no read of the whole table: the sample (40 rows), then the check's two columns of the re-worked rows
    assert seen == [(40, None, 40), (None, ["_lf_check_before", "_lf_check_after"], whole["rows_checked"])]
    assert f"<td>rows_checked</td><td class=n>{whole['rows_checked']}</td>" in text


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


def test_suspects_are_listed_at_the_top_of_the_page_and_by_lakefill_report(run, tmp_path, capsys):
    """A run whose detection kept a suspect (here the findings of a table with a 0 at the edge
    of a column, rows drawn at random) shows it above the counts and in `lakefill report`."""
    import json
    from pathlib import Path

    import numpy as np
    import pyarrow as pa

    from lakefill.pipelines import report as rep
    from lakefill.transforms.detect import NullPolicy

    rng = np.random.default_rng(3)
    skin = np.where(rng.random(1000) < 0.3, 0, np.round(rng.normal(30, 8, 1000))).astype(int)
    other = rng.normal(100, 10, 1000)
    policy = NullPolicy().fit(pa.table({"skin": [str(v) for v in skin], "other": [f"{v:.2f}" for v in other]}))
    assert [f.value for f in policy.suspects()] == ["0"]
    run_dir = tmp_path / "rep"
    shutil.copytree(Path(run.report).parent, run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    report["detection"] = policy.to_dict()
    (run_dir / "report.json").write_text(json.dumps(report))
    text = rep.render_report(run_dir).read_text()
    assert "Suspects: 1 value(s) kept" in text and text.index("Suspects:") < text.index("<h2>Counts</h2>")
    assert main(["report", str(run_dir)]) == 0
    assert "suspect, kept as a value: skin '0'" in capsys.readouterr().out
    shutil.rmtree(run_dir)


def test_the_data_docs_index_lists_every_validation_offline_and_each_row_opens_its_page(run):
    """In headless Chromium: the index has one row per validation of the run, with its status,
    and each row's page exists and renders its status; report.html links the pages straight."""
    from pathlib import Path

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "Debian's chromium is needed for this test (.ci/run installs it: apt-get install chromium)"
    run_dir = Path(run.report).parent
    index = run_dir / "data_docs" / "index.html"

    def dom(page: Path) -> str:
        return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000",
                               "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout

    rows = re.findall(r'<tr class="validation">.*?</tr>', dom(index), re.S)
    assert len(rows) == 1 and "Failed" in rows[0], rows  # the demo's pre-validation: its region failure
    href = re.search(r'href="([^"]+)"', rows[0]).group(1)
    page = (index.parent / href).resolve()
    assert page.exists() and "Failed" in dom(page)
    text = page.read_text()
    assert "\u2713" in text and not re.search(r'<(link|script|img)\b[^>]*(href|src)="https?://', text)
    assert not re.search(r"<img\b(?:(?!\bsrc=)[^>])*>", text, re.S)  # no broken image: GX's logo is shipped
    for ref in re.findall(r'(?:href|src)="([^"#?]+\.(?:css|png|ico|svg))"', text):
        assert (page.parent / ref).resolve().exists(), ref  # the shared assets, once per output
    report = (run_dir / "report.html").read_text()
    assert f'href="data_docs/{(page.relative_to(run_dir / "data_docs")).as_posix()}"' in report


def test_a_reports_folder_holds_no_gx_working_files_and_no_per_run_fonts(run):
    from pathlib import Path

    run_dir = Path(run.report).parent
    names = {p.name for p in run_dir.rglob("*")}
    assert not names & {".gitignore", ".ge_store_backend_id", "great_expectations.yml", "gx"}, names
    assert not any(n.endswith(".otf") for n in names)
    assert (run_dir.parent / "_assets" / "offline" / "bootstrap.min.css").exists()
