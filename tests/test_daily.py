"""Day two and after: a run into an existing table changes its schema only as the job allows
(Delta's rule), decided before any work; the table's columns are in the schema's order."""

import csv
import json
from pathlib import Path

import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from conftest import EXAMPLES, demo_job
from lakefill.errors import ConfigError
from lakefill.pipelines.config import JobConfig
from lakefill.pipelines.local_job import run_local

pytestmark = pytest.mark.slow
SCHEMA_ORDER = ["customer_id", "age", "children", "income", "blood_pressure", "weight_kg", "segment", "region",
                "signup_date"]


def _days(tmp_path: Path) -> dict[str, Path]:
    """Day A: the demo's first 200 rows, columns in reverse order; day B: the next 200 with a
    new column, loyalty_tier; day C: the next 150, without it."""
    with open(EXAMPLES / "customers.csv", newline="") as f:
        rows = [r for r in csv.reader(f)]
    header, body = rows[0], [r for r in rows[1:] if len(r) == len(rows[0])]
    out = {}

    def write(name, cols, data):
        path = tmp_path / f"{name}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            w.writerows(data)
        out[name] = path

    write("a", header[::-1], [r[::-1] for r in body[:200]])
    write("b", header + ["loyalty_tier"], [r + [("gold", "silver", "")[i % 3]] for i, r in enumerate(body[200:400])])
    write("c", header, body[400:550])
    return out


def _job(tmp_path, model, day, run_id, **extra):
    return demo_job(tmp_path, model, input=str(day), run_id=run_id, **extra)


def _table(tmp_path):
    return DeltaTable(str(tmp_path / "out" / "table"))


def test_a_new_column_is_refused_before_any_work_unless_the_job_adds_it(demo_model, tmp_path):
    days = _days(tmp_path)
    run_local(_job(tmp_path, demo_model, days["a"], "day-a"), log=lambda *_: None)
    names = [f.name for f in _table(tmp_path).schema().fields]
    assert [n for n in names if not n.startswith("_lf_")] == SCHEMA_ORDER  # the file's order did not decide

    with pytest.raises(ConfigError, match=r"column\(s\) \['loyalty_tier'\] that the table does not.*schema_evolution: "
                                          r"add_columns.*b\.csv"):
        run_local(_job(tmp_path, demo_model, days["b"], "day-b"), log=lambda *_: None)
    assert _table(tmp_path).version() == 0  # nothing committed
    assert not (tmp_path / "out" / "reports" / "day-b").exists()  # refused before any work

    out = run_local(_job(tmp_path, demo_model, days["b"], "day-b", schema_evolution="add_columns"), log=lambda *_: None)
    rows = _table(tmp_path).to_pyarrow_table().to_pylist()
    tiers = {r["_lf_run_id"]: set() for r in rows}
    for r in rows:
        tiers[r["_lf_run_id"]].add(r["loyalty_tier"])
    assert tiers["day-a"] == {None} and tiers["day-b"] >= {"gold", "silver"}
    report = json.loads(Path(out.report).read_text())
    assert report["counts"]["schema_change"] == {"added": ["loyalty_tier"], "absent": [], "changed": []}
    assert report["passthrough_columns"] == ["loyalty_tier"]

    # day C lacks it: refused, unless its cells may be null
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['loyalty_tier'\].*missing_columns: null"):
        run_local(_job(tmp_path, demo_model, days["c"], "day-c"), log=lambda *_: None)
    run_local(_job(tmp_path, demo_model, days["c"], "day-c", missing_columns="null"), log=lambda *_: None)
    table = _table(tmp_path).to_pyarrow_table()
    day_c = table.filter(pc.equal(table.column("_lf_run_id"), "day-c"))
    assert day_c.num_rows == 150 and day_c.column("loyalty_tier").null_count == 150
    assert table.num_rows == 550


def test_spark_adds_the_column_to_a_table_the_local_engine_wrote(demo_model, tmp_path, spark):
    from lakefill.pipelines.spark_job import run_spark

    days = _days(tmp_path)
    run_local(_job(tmp_path, demo_model, days["a"], "day-a"), log=lambda *_: None)
    with pytest.raises(ConfigError, match="loyalty_tier"):
        run_spark(_job(tmp_path, demo_model, days["b"], "day-b"), spark=spark)
    run_spark(_job(tmp_path, demo_model, days["b"], "day-b", schema_evolution="add_columns"), spark=spark)
    table = _table(tmp_path).to_pyarrow_table()
    assert table.num_rows == 400 and table.column("loyalty_tier").null_count == 200 + sum(i % 3 == 2 for i in range(200))


@pytest.mark.parametrize("field, value", [("schema_evolution", "merge"), ("missing_columns", "drop")])
def test_an_unknown_schema_rule_is_refused_naming_the_field(field, value):
    with pytest.raises(Exception, match=field):
        JobConfig.model_validate({"input": "x.csv", "model": "m", "output": "o", field: value})


def _landing(tmp_path: Path, days: int, rows: int = 60) -> Path:
    """A landing folder with one file a day: consecutive slices of the demo table."""
    with open(EXAMPLES / "customers.csv", newline="") as f:
        data = [r for r in csv.reader(f)]
    header, body = data[0], [r for r in data[1:] if len(r) == len(data[0])]
    folder = tmp_path / "landing"
    folder.mkdir(exist_ok=True)
    for d in range(days):
        path = folder / f"day-{d:02d}.csv"
        if not path.exists():
            with open(path, "w", newline="") as f:
                csv.writer(f).writerows([header] + body[d * rows:(d + 1) * rows])
    return folder


def _rows_by_run(tmp_path) -> dict[str, int]:
    table = _table(tmp_path).to_pyarrow_table()
    runs = table.column("_lf_run_id").to_pylist()
    return {r: runs.count(r) for r in sorted(set(runs))}


def test_incremental_takes_only_new_files_once_and_says_when_there_is_none(demo_model, tmp_path, capsys):
    from lakefill.pipelines.cli import main

    landing = _landing(tmp_path, 3)
    first = run_local(_job(tmp_path, demo_model, landing, "d1", incremental=True), log=lambda *_: None)
    assert first.counts["rows_in"] == 180
    _landing(tmp_path, 4)  # a file arrives
    second = run_local(_job(tmp_path, demo_model, landing, "d2", incremental=True), log=lambda *_: None)
    assert second.counts["rows_in"] == 60
    report = json.loads(Path(second.report).read_text())["incremental"]
    assert [Path(f).name for f in report["files"]] == ["day-03.csv"] and report["listed"] == 4
    assert report["taken_before"] == 3
    # nothing new: not an error, nothing committed
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({**_job(tmp_path, demo_model, landing, "d3", incremental=True).model_dump(by_alias=True)}))
    assert main(["run", str(job), "--engine", "local"]) == 0
    assert "no new file" in capsys.readouterr().out
    assert _rows_by_run(tmp_path) == {"d1": 180, "d2": 60}
    # a re-run of a committed run id takes its own files again and writes nothing twice
    again = run_local(_job(tmp_path, demo_model, landing, "d2", incremental=True), log=lambda *_: None)
    assert not again.committed and _rows_by_run(tmp_path) == {"d1": 180, "d2": 60}


def test_a_changed_file_is_refused_skipped_or_taken_again_as_the_job_says(demo_model, tmp_path):
    from lakefill.errors import NothingNew

    landing = _landing(tmp_path, 2)
    run_local(_job(tmp_path, demo_model, landing, "d1", incremental=True), log=lambda *_: None)
    day1 = landing / "day-01.csv"
    day1.write_text(day1.read_text() + day1.read_text().splitlines()[1] + "\n")  # one more row, same name
    with pytest.raises(ConfigError, match=r"day-01\.csv changed after run 'd1' took it.*changed_files"):
        run_local(_job(tmp_path, demo_model, landing, "d2", incremental=True), log=lambda *_: None)
    with pytest.raises(NothingNew, match="1 changed and skipped"):
        run_local(_job(tmp_path, demo_model, landing, "d2", incremental=True, changed_files="skip"), log=lambda *_: None)
    out = run_local(_job(tmp_path, demo_model, landing, "d2", incremental=True, changed_files="reprocess"),
                    log=lambda *_: None)
    assert out.counts["rows_in"] == 61
    changed = json.loads(Path(out.report).read_text())["incremental"]["changed"]
    assert [Path(c["uri"]).name for c in changed] == ["day-01.csv"] and changed[0]["run_id"] == "d1"


def test_a_killed_run_takes_nothing_and_its_rerun_takes_its_files(demo_model, tmp_path):
    from lakefill.pipelines.launcher import prepare

    landing = _landing(tmp_path, 2)
    prepare(_job(tmp_path, demo_model, landing, "killed", incremental=True), log=lambda *_: None)  # planned, then killed
    out = run_local(_job(tmp_path, demo_model, landing, "next", incremental=True), log=lambda *_: None)
    assert out.counts["rows_in"] == 120 and _rows_by_run(tmp_path) == {"next": 120}


def test_two_incremental_commits_planned_at_once_commit_once(tmp_path):
    """Both runs planned at files counter None; the first commits, the second is refused and
    nothing of it is written (Delta's conflict check on the counter's app transaction)."""
    import pyarrow as pa

    from lakefill.transforms.ingest import IncrementalConflict
    from lakefill.transforms.lake import commit, write_part

    t = pa.table({"x": pa.array([1, 2])})
    table = tmp_path / "table"
    assert commit(table, write_part(t, table), t.schema, run_id="a", mode="append", files_counter=None).committed
    with pytest.raises(IncrementalConflict, match="another incremental run"):
        commit(table, write_part(t, table), t.schema, run_id="b", mode="append", files_counter=None)
    assert commit(table, write_part(t, table), t.schema, run_id="c", mode="append", files_counter=1).committed
    assert DeltaTable(str(table)).to_pyarrow_table().num_rows == 4


def test_incremental_on_a_single_file_is_refused_naming_it(demo_model, tmp_path):
    with pytest.raises(ConfigError, match=r"incremental: true needs an input folder or glob.*customers\.csv"):
        run_local(demo_job(tmp_path, demo_model, incremental=True), log=lambda *_: None)


def test_compact_every_bounds_the_files_and_maintain_compacts_and_vacuums(demo_model, tmp_path, capsys):
    from lakefill.pipelines.cli import main

    landing = tmp_path / "landing"
    counts = []
    for day in range(5):
        _landing(tmp_path, day + 1, rows=40)
        run_local(_job(tmp_path, demo_model, landing, f"d{day}", incremental=True, compact_every=2, batch_size=20),
                  log=lambda *_: None)
        counts.append(len(_table(tmp_path).file_uris()))
    # two parts a run (batch_size 20); compacted into one file after every second run
    assert counts == [2, 1, 3, 1, 3], counts
    assert _table(tmp_path).to_pyarrow_table().num_rows == 200
    out = tmp_path / "out"
    assert main(["maintain", str(out), "--compact", "--vacuum", "--retain-hours", "0"]) == 0
    text = capsys.readouterr().out
    assert "compacted 3 files into 1" in text and "vacuumed" in text
    assert len(list((out / "table").glob("*.parquet"))) == 1 and (out / "table" / "_lakefill" / "files").is_dir()
    assert _table(tmp_path).to_pyarrow_table().num_rows == 200
    (tmp_path / "plain").mkdir()
    assert main(["maintain", str(tmp_path / "plain"), "--compact"]) == 2
    assert "is not a Delta table" in capsys.readouterr().err


def test_a_compaction_beside_a_commit_loses_and_doubles_no_row(tmp_path):
    """OPTIMIZE planned on a snapshot, a run's append committed meanwhile: both land, every row once."""
    import pyarrow as pa

    from lakefill.transforms.lake import commit, write_part

    table = tmp_path / "table"
    for i in range(4):
        t = pa.table({"x": pa.array([i * 10 + k for k in range(10)])})
        commit(table, write_part(t, table), t.schema, run_id=f"r{i}", mode="append")
    snapshot = DeltaTable(str(table))  # the compaction's view
    t = pa.table({"x": pa.array(range(100, 110))})
    commit(table, write_part(t, table), t.schema, run_id="beside", mode="append")
    snapshot.optimize.compact()
    rows = sorted(DeltaTable(str(table)).to_pyarrow_table().column("x").to_pylist())
    assert rows == list(range(40)) + list(range(100, 110))


def test_drift_measures_a_shifted_column_and_not_a_fresh_sample():
    import numpy as np
    import pyarrow as pa

    from lakefill._drift import count_batch, drift_report, profile_table
    from lakefill.schema import ColumnSchema, TableSchema

    rng = np.random.default_rng(0)
    schema = TableSchema(columns=[ColumnSchema(name="x", type="numeric", impute=True),
                                  ColumnSchema(name="c", type="categorical", impute=True, categories=["a", "b", "c"])])

    def sample(n, shift=0.0, p=(0.5, 0.3, 0.2)):
        x = rng.normal(10 + shift, 2, n)
        x[rng.random(n) < 0.1] = np.nan
        return pa.table({"x": pa.array(x, from_pandas=True), "c": pa.array(rng.choice(["a", "b", "c"], n, p=p))})

    profile = profile_table(sample(5000), schema)
    assert profile["x"]["kind"] == "numeric" and len(profile["x"]["edges"]) == 9
    assert 0.05 < profile["x"]["missing_share"] < 0.15
    fresh = drift_report(profile, count_batch(sample(2000), profile))
    assert not any(d["drifted"] for d in fresh.values()), fresh
    moved = drift_report(profile, count_batch(sample(2000, shift=3.0, p=(0.2, 0.3, 0.5)), profile))
    assert moved["x"]["drifted"] and moved["x"]["measure"] == "jensen_shannon"
    assert moved["c"]["drifted"] and moved["c"]["measure"] == "l_infinity" and abs(moved["c"]["distance"] - 0.3) < 0.05
    # counters are mergeable: two halves give the counts of the whole
    a, b = sample(300), sample(300)
    whole = count_batch(pa.concat_tables([a, b]), profile)
    halves = {k: count_batch(a, profile).get(k, 0) + count_batch(b, profile).get(k, 0) for k in whole}
    assert halves == whole
    # a threshold of the schema's is used; too few cells are not judged
    assert drift_report(profile, count_batch(sample(2000, shift=3.0), profile), {"x": 0.99})["x"]["drifted"] is False
    assert drift_report(profile, count_batch(sample(20, shift=3.0), profile))["x"]["distance"] is None


@pytest.mark.parametrize("engine", ["local", "spark", "beam"])
def test_a_run_reports_drift_on_every_engine_and_check_fails_it(engine, demo_model, tmp_path, capsys, request):
    """The demo model against its own training file (no drift) and against the same rows with
    incomes tripled (drift on income only); `lakefill report --check` fails the second."""
    from lakefill.pipelines.cli import main

    with open(EXAMPLES / "customers.csv", newline="") as f:
        rows = [r for r in csv.reader(f)]
    header = rows[0]
    i = header.index("income")
    shifted = tmp_path / "shifted.csv"
    with open(shifted, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows[1:]:
            if len(r) == len(header):
                try:
                    r[i] = f"{float(r[i]) * 3:.2f}"
                except ValueError:
                    pass
            w.writerow(r)

    def run(day, run_id):
        job = _job(tmp_path, demo_model, day, run_id)
        if engine == "local":
            return run_local(job, log=lambda *_: None)
        if engine == "spark":
            from lakefill.pipelines.spark_job import run_spark

            return run_spark(job, spark=request.getfixturevalue("spark"))
        from lakefill.pipelines.beam_pipeline import run_beam

        return run_beam(job, [])

    same = json.loads(Path(run(EXAMPLES / "customers.csv", "same").report).read_text())["drift"]
    assert {"income", "age", "segment"} <= set(same) and not any(d["drifted"] for d in same.values()), same
    moved = run(shifted, "moved")
    drift = json.loads(Path(moved.report).read_text())["drift"]
    assert [c for c, d in drift.items() if d["drifted"]] == ["income"], drift
    assert main(["report", str(Path(moved.report).parent), "--check"]) == 1
    assert "column 'income' drifted" in capsys.readouterr().out
    assert "Drift: 1 column(s) moved" in (Path(moved.report).parent / "report.html").read_text()
    conf = json.loads(Path(moved.report).read_text())["drift_confidence"]  # the rows' trust beside training's
    assert 0 < conf["run_mean_confidence"] <= 1 and 0 < conf["training_mean_confidence"] <= 1
    assert 0 <= conf["run_routed_share"] <= 1 and 0 <= conf["training_routed_share"] <= 1


def test_retrain_on_drift_writes_a_version_beside_the_model_that_later_runs_use(demo_model, tmp_path, capsys):
    import shutil

    from lakefill.pipelines.cli import main
    from lakefill.pipelines.versions import versions
    from benchmarks.month import day_file

    model = tmp_path / "models" / "customers"
    shutil.copytree(demo_model, model)
    landing = tmp_path / "landing"
    landing.mkdir()

    def day(n, shift):
        (landing / f"day-{n:02d}.csv").write_text(day_file(n, rows=300, column_day=99, shift_day=1 if shift else 99))
        return run_local(_job(tmp_path, model, landing, f"day-{n:02d}", incremental=True, retrain="on_drift"),
                         log=lambda *_: None)

    first = json.loads(Path(day(1, False).report).read_text())
    assert "retrain" not in first and not any(d["drifted"] for d in first["drift"].values())
    second = json.loads(Path(day(2, True).report).read_text())
    assert second["retrain"]["trained"] and second["retrain"]["accepted"], second["retrain"]
    assert second["retrain"]["check_score"] <= second["retrain"]["check_score_of_current"]
    assert [n for n, _ in versions(model)] == [1, 2] and (tmp_path / "models" / "customers.v2" / "check.json").exists()
    third = json.loads(Path(day(3, True).report).read_text())
    assert third["model"].endswith("customers.v2") and "retrain" not in third  # no drift against v2's rows
    history = [h for h in _table(tmp_path).history() if "lakefill.run_id" in h]
    used = {h["lakefill.run_id"]: h["lakefill.model"] for h in history}
    assert used["day-01"].endswith("customers") and used["day-03"].endswith("customers.v2")
    assert all(len(h["lakefill.model_sha256"]) == 64 for h in history)
    assert main(["models", "list", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "v1" in text and "v2" in text and "accepted" in text and "day-03" in text
    with pytest.raises(Exception, match="retrain_every"):
        JobConfig.model_validate({"input": "x", "model": "m", "output": "o", "retrain": "every_n_runs"})


@pytest.mark.parametrize("engine", ["local", "spark"])
def test_a_small_month_on_the_s3_server(engine, demo_model, s3, request):
    """Protocol G in small: 12 days, a column from day 4, incomes tripled from day 8, day 10
    killed after planning and run again, compact_every 3 (python -m benchmarks.month: 30 days)."""
    from benchmarks.month import simulate

    if engine == "local":
        run = lambda cfg: run_local(cfg, log=lambda *_: None)  # noqa: E731
    else:
        from lakefill.pipelines.spark_job import run_spark

        spark = request.getfixturevalue("spark")
        run = lambda cfg: run_spark(cfg, spark=spark, log=lambda *_: None)  # noqa: E731
    month = simulate(s3.bucket(f"month-{engine}"), s3.options, run, model_dir=demo_model, days=12, rows=200,
                     column_day=4, shift_day=8, kill_day=10, compact_every=3)
    assert month["every_row_once"] and month["rows_landed"] == 2400, month
    assert month["new_column_null_before"] and month["new_column_present_after"] == month["table_rows_after"] > 1700
    assert month["first_drift_day"] == 8 and month["drift_days"] == [8], month["drift_days"]
    models = [d["model"] for d in month["per_day"]]
    # day 8 drifted: on_drift (adapt_all) filled it through networks adapted to its rows, then retrain wrote v2
    assert all(m.endswith("customers") for m in models[:7]) and all(m.endswith("customers.v2") for m in models[8:])
    assert models[7].endswith(("customers.adapted-day-08", "customers")), models[7]
    assert month["max_table_files"] <= 3  # one part a run, compacted into one after every third run


def test_a_drift_threshold_outside_0_1_is_refused_naming_the_column():
    from lakefill.schema import ColumnSchema

    for bad in (-0.1, 1.5):
        with pytest.raises(Exception, match="drift_threshold"):
            ColumnSchema(name="x", type="numeric", drift_threshold=bad)


def test_a_nullable_schema_column_a_file_lacks_is_null_and_never_imputed_when_the_job_says_so(demo_model, tmp_path):
    from lakefill.errors import SchemaError

    with open(EXAMPLES / "customers.csv", newline="") as f:
        rows = [r for r in csv.reader(f)]
    k = rows[0].index("segment")
    day = tmp_path / "no_segment.csv"
    with open(day, "w", newline="") as f:
        csv.writer(f).writerows([r[:k] + r[k + 1:] for r in rows[:201] if len(r) == len(rows[0])])
    with pytest.raises(SchemaError, match=r"\['segment'\].*missing_columns: null"):
        run_local(_job(tmp_path, demo_model, day, "a"), log=lambda *_: None)
    out = run_local(_job(tmp_path, demo_model, day, "b", missing_columns="null"), log=lambda *_: None)
    table = _table(tmp_path).to_pyarrow_table()
    assert table.num_rows + out.counts["rows_quarantined"] == 200
    assert table.column("segment").null_count == table.num_rows  # null, not invented
    assert all("segment" in na for na in table.column("_lf_not_applicable").to_pylist())
    assert not any("segment" in imp for imp in table.column("_lf_imputed").to_pylist())
    assert json.loads(Path(out.report).read_text())["absent_columns"] == {"segment": 200}
