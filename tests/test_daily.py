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
