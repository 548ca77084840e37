import json
import re
import shutil
import sys

import pyarrow.compute as pc
import pytest
import yaml
from deltalake import DeltaTable

from conftest import ROOT, write
from lakefill.pipelines.cli import main
from lakefill.pipelines.config import load_config
from lakefill.errors import ConfigError

EXAMPLES = ROOT / "pipelines" / "examples"


def test_detect_json_follows_the_protocol(data, tmp_path, capsys):
    out = tmp_path / "d.json"
    assert main(["detect", str(data / "dmv" / "tables" / "pima-indians-diabetes.csv"), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["table"] == "pima-indians-diabetes" and data["rows"] == 768
    finding = data["columns"]["Diastolic blood pressure"][0]
    assert set(finding) == {"value", "count", "detector", "evidence", "kind", "share", "suspect"}
    assert finding["value"] == "0" and finding["kind"] == "missing" and finding["suspect"] is False
    assert finding["count"] == 35
    assert "Diastolic blood pressure" in capsys.readouterr().out


def test_schema_infer_writes_a_loadable_schema(messy_csv, tmp_path, capsys):
    from lakefill.schema import load_schema

    assert main(["schema", "infer", str(messy_csv)]) == 0
    text = capsys.readouterr().out
    schema_path = write(tmp_path / "s.yaml", text)
    assert load_schema(schema_path).column("blood_pressure").null_values == ["0"]


def test_missing_input_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    assert main(["detect", str(tmp_path / "missing.csv")]) == 2
    assert "lakefill: error: input file not found" in capsys.readouterr().err


def test_bad_config_is_refused_before_any_work(tmp_path):
    p = write(tmp_path / "c.yaml", "input: x.csv\nmodel: m\noutput: o\nconfidence_threshold: 2\nbogus: 1\n")
    with pytest.raises(ConfigError, match="confidence_threshold.*\n.*bogus"):
        load_config(p)


def _job(tmp_path, **extra):
    shutil.copy(EXAMPLES / "customers.csv", tmp_path / "customers.csv")
    shutil.copy(EXAMPLES / "customers.schema.yaml", tmp_path / "customers.schema.yaml")
    cfg = {"input": "customers.csv", "schema": "customers.schema.yaml", "model": "model", "output": "out",
           "train_if_missing": True, "mode": "append", "run_id": "r1", **extra}
    return write(tmp_path / "job.yaml", yaml.safe_dump(cfg))


@pytest.mark.slow
def test_local_run_end_to_end_and_idempotent_rerun(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("lakefill.progress.EVERY", 0.0)  # a progress line at every step (30 s apart by default)
    import lakefill.transforms.stage as stage

    writes = []
    real_write = stage.write_report
    monkeypatch.setattr(stage, "write_report", lambda d, r: writes.append(str(d)) or real_write(d, r))
    job = _job(tmp_path)
    assert main(["run", str(job), "--engine", "local"]) == 0
    # the report is built as one dict, completed by the launcher and written once
    assert writes == [str(tmp_path / "out" / "reports" / "r1")]
    logged = capsys.readouterr().out  # no terminal: training's and the run's progress are log lines
    assert re.search(r"^training \d network\(s\): [\d,]+/[\d,]+ steps \(100%\), network \d+x\d+x\d+, val_loss", logged, re.M)
    assert re.search(r"^training: the trees member$", logged, re.M)
    assert re.search(r"^run r1: 602 rows, quarantined 2, .* elapsed", logged, re.M)
    out = tmp_path / "out"
    table = DeltaTable(str(out / "table")).to_pyarrow_table()
    quarantine = DeltaTable(str(out / "quarantine")).to_pyarrow_table()
    report = json.loads((out / "reports" / "r1" / "report.json").read_text())
    counts = report["counts"]
    assert counts["rows_in"] == 602 == table.num_rows + quarantine.num_rows
    ids = table.column("_lf_row_id").to_pylist() + quarantine.column("_lf_row_id").to_pylist()
    assert sorted(ids) == list(range(602))  # every row in exactly one place
    reasons = dict(zip(quarantine.column("_lf_row_id").to_pylist(), quarantine.column("reason").to_pylist()))
    assert "ragged row" in reasons[600] and "expect_column_values_to_be_in_set(region)" in reasons[601]
    for col in ("age", "income", "blood_pressure", "weight_kg", "segment"):
        assert table.column(col).null_count == 0, col
    assert counts["disguised_nulls_replaced"]["blood_pressure"] == 30
    assert set(table.column("_lf_method").unique().to_pylist()) <= {"none", "ae", "donor", "reverse"}
    assert pc.all(pc.equal(table.column("_lf_run_id"), "r1")).as_py()
    assert (out / "reports" / "r1" / "data_docs").exists() and (out / "reports" / "r1" / "report.html").exists()
    assert "column_shares" in report and "detection" in report  # the launcher's sections, in the one write
    version = DeltaTable(str(out / "table")).version()
    assert main(["run", str(job), "--engine", "local"]) == 0  # same run id: nothing twice
    assert "already committed" in capsys.readouterr().out
    assert DeltaTable(str(out / "table")).version() == version
    assert DeltaTable(str(out / "table")).to_pyarrow_table().num_rows == table.num_rows


def test_an_unknown_flag_is_refused_before_any_work(tmp_path, capsys):
    job = _job(tmp_path)
    assert main(["run", str(job), "--ouptut", "elsewhere"]) == 2
    err = capsys.readouterr().err
    assert "unknown option(s) ['--ouptut']" in err and "lakefill run --help" in err
    assert not (tmp_path / "model").exists() and not (tmp_path / "out").exists()  # no training, no output
    assert main(["run", str(job), "--engine", "spark", "--ouptut", "elsewhere"]) == 2
    err = capsys.readouterr().err
    assert "unknown option(s) for the Spark engine" in err and "did you mean --output for --ouptut" in err
    assert not (tmp_path / "model").exists() and not (tmp_path / "out").exists()  # refused before any work
    assert main(["run", str(job), "--engine", "local", "--mdoel", "m"]) == 2
    assert "did you mean --model for --mdoel" in capsys.readouterr().err


@pytest.mark.slow
def test_epochs_on_the_command_line_are_honoured(tmp_path):
    assert main(["train", "--input", str(EXAMPLES / "customers.csv"), "--schema", str(EXAMPLES / "customers.schema.yaml"),
                 "--out", str(tmp_path / "m"), "--epochs", "3", "--hidden", "16", "--depth", "1", "--no-gaussian",
                 "--no-donors", "--no-trees", "--no-chained", "--quiet"]) == 0
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["metrics"]["epochs_run"] <= 3 and manifest["config"]["epochs"] == 3


@pytest.mark.slow
def test_the_jobs_training_section_trains_the_model_and_the_flags_override_it(tmp_path, capsys):
    job = _job(tmp_path, training={"epochs": 2, "hidden": 16, "depth": 1, "code": 4, "seed": 5,
                                   "without": ["gaussian", "trees", "chained", "donors"]})
    assert main(["train", "--job", str(job), "--quiet"]) == 0
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["config"]["epochs"] == 2 and manifest["config"]["random_state"] == 5
    assert [(n["hidden"], n["depth"], n["code"]) for n in manifest["metrics"]["networks"]] == [(16, 1, 4)]
    assert main(["train", "--job", str(job), "--out", str(tmp_path / "m2"), "--epochs", "1", "--seed", "6", "--quiet"]) == 0
    manifest = json.loads((tmp_path / "m2" / "manifest.json").read_text())
    assert manifest["config"]["epochs"] == 1 and manifest["config"]["random_state"] == 6
    assert manifest["config"]["without"] == ["gaussian", "trees", "chained", "donors"]  # the job's, the flags add none


def test_bad_training_flags_get_the_job_configs_error_format(tmp_path, capsys):
    job = _job(tmp_path)
    assert main(["train", "--job", str(job), "--epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert "the command's flags: invalid job config:\n  - training.epochs: Input should be greater than or equal to 1" in err
    assert main(["run", str(job), "--run-id", "no spaces"]) == 2
    err = capsys.readouterr().err
    assert f"{job}: invalid job config:\n  - run_id: Value error, run_id must be" in err
    assert not (tmp_path / "model").exists() and not (tmp_path / "out").exists()  # refused before any work


def test_every_registered_command_is_on_the_command_line():
    import argparse

    from lakefill.pipelines.cli import build_parser
    from lakefill.pipelines.commands import COMMANDS

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == [c.__name__.rsplit(".", 1)[1] for c in COMMANDS]
    for name, parser in sub.choices.items():  # every command takes --debug
        assert "--debug" in parser.format_help(), name


def test_the_airflow_dags_report_check_is_lakefills_own_file():
    import runpy

    from lakefill.pipelines import report_checks

    linked = ROOT / "deploy" / "airflow" / "dags" / "lakefill_entry" / "report_checks.py"
    assert linked.is_symlink() and linked.resolve() == (ROOT / "pipelines" / "report_checks.py").resolve()
    report = {"counts": {"rows_in": 3, "rows_written": 1, "rows_quarantined": 1}, "committed": True}
    assert runpy.run_path(str(linked))["report_problems"](report) == report_checks.report_problems(report) != []


@pytest.mark.slow
def test_too_many_quarantined_rows_fail_the_run(tmp_path, capsys):
    job = _job(tmp_path, max_quarantine_share=0.001, run_id="r2")
    assert main(["run", str(job)]) == 2
    assert "over the max_quarantine_share" in capsys.readouterr().err
    assert not (tmp_path / "out" / "table" / "_delta_log").exists()


@pytest.mark.slow
def test_train_then_impute_cli(tmp_path, capsys):
    data = EXAMPLES / "customers.csv"
    assert main(["train", "--input", str(data), "--schema", str(EXAMPLES / "customers.schema.yaml"),
                 "--out", str(tmp_path / "m"), "--epochs", "20", "--quiet"]) == 0
    assert main(["impute", "--input", str(data), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o.csv"),
                 "--refine-below", "0.5"]) == 0
    text = (tmp_path / "o.csv").read_text()
    assert "_lf_confidence" in text.splitlines()[0]
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    nets = manifest["metrics"]["networks"]  # the default sizes, mixed by weights fitted on held-out cells
    assert [[n["hidden"], n["depth"], n["code"]] for n in nets] == [[256, 3, 64], [128, 2, 16]]
    assert manifest["architecture"]["sizes"] == [[n["hidden"], n["depth"], n["code"]] for n in nets if n["weight"] > 0]
    gaussian = manifest["metrics"]["gaussian"]  # offered to the mixture by default, kept if it earns a weight
    assert manifest["architecture"]["gaussian"] == (gaussian["weight"] > 0)
    assert sum(n["weight"] for n in nets) + gaussian["weight"] == pytest.approx(1.0)
    donors = manifest["metrics"]["donors"]  # offered by default; kept only if a band's held-out cells give it a weight
    assert donors["rows"] > 0 and manifest["architecture"]["donors"] == (donors["rows"] if donors["used"] else 0)
    assert manifest["architecture"]["squash"] == 0.0  # the input squash is opt-in
    trees = manifest["metrics"]["trees"]  # offered by default; kept only with a held-out weight above 0
    assert (manifest["architecture"]["trees"] is not None) == trees["used"] == (trees["weight"] > 0)
    # a size on the command line is the one network trained, and the manifest says so
    assert main(["train", "--input", str(data), "--schema", str(EXAMPLES / "customers.schema.yaml"),
                 "--out", str(tmp_path / "m2"), "--epochs", "5", "--hidden", "16", "--depth", "1", "--no-gaussian",
                 "--no-donors", "--no-trees", "--no-chained", "--squash", "3", "--quiet"]) == 0
    manifest = json.loads((tmp_path / "m2" / "manifest.json").read_text())
    assert manifest["architecture"]["sizes"] == [[16, 1, 64]]
    assert manifest["architecture"]["squash"] == 3.0 and manifest["config"]["squash"] == 3.0
    assert manifest["architecture"]["gaussian"] is False and manifest["metrics"]["gaussian"] is None
    assert manifest["architecture"]["donors"] == 0 and manifest["metrics"]["donors"] is None
    assert manifest["architecture"]["trees"] is None and manifest["metrics"]["trees"] is None
    assert (manifest["config"]["hidden"], manifest["config"]["depth"]) == (16, 1)


def test_demo_replaces_a_model_of_an_older_format_but_keeps_a_current_one(tmp_path, capsys):
    from lakefill.models.artifact import FORMAT
    from lakefill.pipelines.commands.demo import _drop_stale_demo_model

    old, current = tmp_path / "old", tmp_path / "current"
    for d, fmt in ((old, "lakefill-model/1"), (current, FORMAT)):
        d.mkdir()
        (d / "manifest.json").write_text(json.dumps({"format": fmt}))
    _drop_stale_demo_model(old)
    _drop_stale_demo_model(current)
    assert not old.exists() and (current / "manifest.json").exists()
    assert "lakefill-model/1" in capsys.readouterr().out


@pytest.mark.slow
def test_the_shortest_path_runs_a_file_with_no_config(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    lines = ["age,hours,group"] + [f"{a},{'?' if i % 17 == 0 else h},{g}" for i, (a, h, g) in enumerate(
        zip(rng.integers(18, 80, 200), rng.integers(10, 60, 200), rng.choice(["a", "b"], 200)))]
    data = write(tmp_path / "mine.csv", "\n".join(lines) + "\n")
    import subprocess
    import sys
    from pathlib import Path

    lakefill = Path(sys.executable).parent / "lakefill"  # as a user runs it: the console script, the Beam engine
    run = subprocess.run([str(lakefill), "run", "--input", str(data), "--output", str(tmp_path / "out"), "--run-id", "one"],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "run one: 200 rows in, 200 written" in run.stdout
    noise = [line for line in run.stderr.splitlines() if "WARNING" in line or "INFO" in line]
    assert not noise, noise  # a normal run is quiet: no Beam import warnings, no GX INFO lines
    table = DeltaTable(str(tmp_path / "out" / "table")).to_pyarrow_table()
    assert table.num_rows == 200 and table.column("hours").null_count == 0
    assert (tmp_path / "out" / "model" / "manifest.json").exists()
    assert main(["run", "--input", str(data), "--output", str(tmp_path / "out"), "--engine", "local", "--run-id", "two"]) == 2
    assert "already exists and mode is 'error'" in capsys.readouterr().err  # never clobber, refused before any work
    assert main(["run", "--engine", "local"]) == 2


@pytest.mark.slow
def test_train_shows_one_progress_bar_and_keeps_its_time_budget_in_the_manifest(tmp_path, capsys, monkeypatch):
    args = ["train", "--input", str(EXAMPLES / "customers.csv"), "--schema", str(EXAMPLES / "customers.schema.yaml"),
            "--epochs", "4", "--hidden", "16", "--depth", "1", "--no-gaussian", "--no-donors", "--no-trees", "--no-chained"]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # a terminal: the bar (else log lines)
    assert main(args + ["--out", str(tmp_path / "m"), "--time-budget", "600"]) == 0
    err = capsys.readouterr().err
    assert "training 1 network(s)" in err and "step" in err and "\r" in err  # one bar over the steps, with its rate and ETA
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["config"]["time_budget"] == 600.0 and manifest["config"]["schedule"] == "plateau"
    for bad in ("0", "-5", "soon", "inf"):
        with pytest.raises(SystemExit) as exit_:
            main(args + ["--out", str(tmp_path / "x"), "--time-budget", bad])
        assert exit_.value.code == 2 and "--time-budget" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_run_input_takes_a_schema_and_a_model(demo_model, tmp_path, capsys):
    """`lakefill run --input my.csv --schema my.schema.yaml --model M` (a natural guess) runs
    with that schema and model; before, the schema was taken for a job config."""
    out = tmp_path / "out"
    args = ["run", "--input", str(EXAMPLES / "customers.csv"), "--schema", str(EXAMPLES / "customers.schema.yaml"),
            "--model", str(demo_model), "--output", str(out), "--engine", "local", "--run-id", "s"]
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((out / "reports" / "s" / "report.json").read_text())
    assert report["config"]["schema"] == str(EXAMPLES / "customers.schema.yaml")
    assert report["model"] == str(demo_model) and not (out / "model").exists()  # nothing trained
    capsys.readouterr()
    assert main(["run", str(tmp_path / "job.yaml"), "--input", "x.csv", "--engine", "local"]) == 2
    assert "a schema goes with --schema" in capsys.readouterr().err


@pytest.mark.slow
def test_a_spark_run_through_the_console_script_shows_lakefills_lines_only(tmp_path):
    """No JVM or log4j warnings on the console of a Spark run (they go to a log file);
    --verbose brings Spark's own lines back."""
    import subprocess
    import sys
    from pathlib import Path

    lines = ["a,b,g"] + [f"{i % 50},{'?' if i % 13 == 0 else (i * 7) % 90},{'xy'[i % 2]}" for i in range(200)]
    data = write(tmp_path / "small.csv", "\n".join(lines) + "\n")
    lakefill = Path(sys.executable).parent / "lakefill"
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("SPARK_LOCAL_IP", "LAKEFILL_VERBOSE")}
    run = subprocess.run([str(lakefill), "run", "--input", str(data), "--output", str(tmp_path / "out"), "--engine",
                          "spark", "--run-id", "one"], capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "run one: 200 rows in, 200 written" in run.stdout
    noise = [line for line in (run.stderr + run.stdout).splitlines()
             if any(w in line for w in ("WARN", "log4j", "incubator", "loopback", "native-hadoop"))]
    assert not noise, noise
    loud = subprocess.run([str(lakefill), "run", "--input", str(data), "--output", str(tmp_path / "out2"), "--engine",
                           "spark", "--run-id", "two", "--verbose"], capture_output=True, text=True, timeout=900,
                          cwd=tmp_path, env=env)
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "WARN" in loud.stderr or "log4j" in loud.stderr
