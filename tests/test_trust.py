"""A run a user can trust: both tables or neither, refused before any work, nothing left behind."""

from pathlib import Path

import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

import lakefill.transforms.stage as stage
from conftest import demo_job
from lakefill.pipelines.local_job import run_local
from lakefill.errors import ConfigError, LakefillError
from lakefill.transforms.io import ROW_ID
from lakefill.transforms.stage import QuarantineExceeded

pytestmark = pytest.mark.slow


def _ids(uri) -> list[int]:
    return DeltaTable(str(uri)).to_pyarrow_table().column(ROW_ID).to_pylist()


def _parquet_files(folder) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*.parquet")}


def _committed_files(uri) -> set[str]:
    return {Path(p.removeprefix("file://")).relative_to(uri).as_posix() for p in DeltaTable(str(uri)).file_uris()}


def test_a_failure_between_the_two_commits_is_completed_by_the_retry(demo_model, tmp_path, monkeypatch):
    cfg = demo_job(tmp_path, demo_model, run_id="half", mode="error")
    out = tmp_path / "out"
    real_commit = stage.commit

    def failing_commit(uri, *args, **kwargs):
        if str(uri).endswith("quarantine"):
            raise OSError("injected: the store went away")
        return real_commit(uri, *args, **kwargs)

    monkeypatch.setattr(stage, "commit", failing_commit)
    with pytest.raises(LakefillError, match="re-run the job with the same run id"):
        run_local(cfg, log=lambda *_: None)
    table_version = DeltaTable(str(out / "table")).version()
    assert not (out / "quarantine" / "_delta_log").exists()
    assert not _parquet_files(out / "quarantine")  # the failed half left no part behind
    monkeypatch.setattr(stage, "commit", real_commit)
    outcome = run_local(cfg, log=lambda *_: None)  # the retry, same run id, mode error: allowed
    assert DeltaTable(str(out / "table")).version() == table_version  # the table got nothing twice
    ids = _ids(out / "table") + _ids(out / "quarantine")
    assert sorted(ids) == list(range(outcome.counts["rows_in"]))  # every row exactly once
    assert _parquet_files(out / "table") == _committed_files(out / "table")  # no orphan parts
    assert _parquet_files(out / "quarantine") == _committed_files(out / "quarantine")


def test_mode_error_on_an_existing_table_is_refused_before_any_work(demo_model, tmp_path, monkeypatch):
    run_local(demo_job(tmp_path, demo_model, run_id="first", mode="error"), log=lambda *_: None)
    out = tmp_path / "out"
    versions = DeltaTable(str(out / "table")).version(), DeltaTable(str(out / "quarantine")).version()
    files = _parquet_files(out)
    monkeypatch.setattr("lakefill.pipelines.local_job.iter_raw", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ConfigError, match="already exists and mode is 'error'"):
        run_local(demo_job(tmp_path, demo_model, run_id="second", mode="error"), log=lambda *_: None)
    assert (DeltaTable(str(out / "table")).version(), DeltaTable(str(out / "quarantine")).version()) == versions
    assert _parquet_files(out) == files


def test_over_the_share_commits_neither_table_and_keeps_the_rejected_rows(demo_model, tmp_path):
    import pyarrow.parquet as pq

    cfg = demo_job(tmp_path, demo_model, run_id="strict", max_quarantine_share=0.001)
    with pytest.raises(QuarantineExceeded, match="quarantine.parquet"):
        run_local(cfg, log=lambda *_: None)
    out = tmp_path / "out"
    assert not (out / "table" / "_delta_log").exists() and not (out / "quarantine" / "_delta_log").exists()
    assert not _parquet_files(out / "table") and not _parquet_files(out / "quarantine")
    rejected = pq.read_table(out / "reports" / "strict" / "quarantine.parquet")
    assert rejected.num_rows == 2 and pc.all(pc.equal(rejected.column("_lf_run_id"), "strict")).as_py()


def test_report_check_fails_on_a_column_imputed_over_its_allowed_share(demo_model, tmp_path, capsys):
    import json

    import yaml

    from conftest import EXAMPLES
    from lakefill.pipelines.cli import main

    schema = yaml.safe_load((EXAMPLES / "customers.schema.yaml").read_text())
    for col in schema["columns"]:
        if col["name"] == "blood_pressure":
            col["max_imputed_share"] = 0.01  # the demo imputes about 5% of it (its 0s)
    (tmp_path / "strict.yaml").write_text(yaml.safe_dump(schema))
    outcome = run_local(demo_job(tmp_path, demo_model, run_id="shares", schema=str(tmp_path / "strict.yaml")),
                        log=lambda *_: None)
    run_dir = tmp_path / "out" / "reports" / "shares"
    assert main(["report", str(run_dir), "--check"]) == 1
    text = capsys.readouterr().out
    assert "column 'blood_pressure'" in text and "'0' (pinned)" in text and "max_imputed_share of 1%" in text
    assert "column 'age'" not in text  # the other columns stay under the default 50%
    shares = json.loads((run_dir / "report.json").read_text())["column_shares"]
    assert shares["blood_pressure"]["over"] and shares["blood_pressure"]["replaced"] == 30
    assert "Cells replaced and imputed per column" in (run_dir / "report.html").read_text()
    assert outcome.committed
