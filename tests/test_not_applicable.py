"""Structural "not applicable" zeros and the suspect rule, from detection to the imputed batch."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conftest import write
from lakefill.models.config import AEConfig
from lakefill.models.artifact import load_artifact, save_artifact
from lakefill.models.training import fit_model
from lakefill.pipelines.cli import main
from lakefill.transforms.detect import DISGUISED, NOT_APPLICABLE, NullPolicy
from lakefill.transforms.impute import IMPUTED, Imputer
from lakefill.transforms.io import ROW_ID, read_raw
from lakefill.transforms.parse import parse_table
from lakefill.schema import ColumnSchema, TableSchema, infer_schema
from lakefill.transforms.validate import Validator

GRADES = [f"g{k}" for k in range(1, 13)]
TYPES = {"elementary": range(1, 6), "middle": range(6, 9), "high": range(9, 13), "k8": range(1, 9)}


def school_rows(n=400, seed=0):
    """Schools of four kinds; a grade a school does not teach has 0 pupils (not applicable)."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(list(TYPES), n)
    rows = []
    for i, kind in enumerate(kinds):
        size = rng.uniform(20, 160)
        counts = {g: 0 for g in GRADES}
        for k in TYPES[kind]:
            counts[f"g{k}"] = max(1, int(round(size + rng.normal(0, 8))))
        rows.append({"school": f"s{i}", "kind": kind, **{g: str(v) for g, v in counts.items()},
                     "teachers": str(int(round(sum(counts.values()) / 18 + rng.normal(0, 1)))),
                     "children": str(rng.poisson(1.3))})
    return rows


def school_table(rows) -> pa.Table:
    names = list(rows[0])
    return pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in names})


def _found(policy, column):
    return {f.value: (f.detector, f.kind, f.suspect) for f in policy.findings_[column]}


def test_zeros_of_grades_a_school_does_not_teach_are_not_applicable():
    p = NullPolicy().fit(school_table(school_rows()))
    for g in GRADES:
        assert _found(p, g) == {"0": ("structural", "not_applicable", False)}, g
    assert _found(p, "children") == {} and _found(p, "teachers") == {}
    evidence = p.findings_["g10"][0].evidence
    assert "sibling column" in evidence and "'g11'" in evidence and "(0, 2]" in evidence


def test_percentages_written_as_text_count_too():
    """A grade's share of the school's pupils, written "12.5%", is "0%" where the grade is not
    taught: structural, through the count columns it falls on. Percentages alone (shares of the
    same counts, 0 together) are no evidence."""
    rows = school_rows(seed=1)
    for r in rows:
        total = sum(int(r[g]) for g in GRADES)
        for g in GRADES:
            v = int(r[g])
            r[f"share_{g}"] = "0%" if v == 0 else f"{100 * v / total:.1f}%"
    p = NullPolicy().fit(school_table(rows))
    assert _found(p, "share_g3") == {"0%": ("structural", "not_applicable", False)}
    only_shares = [{k: v for k, v in r.items() if not k.startswith("g")} for r in rows]
    p = NullPolicy().fit(school_table(only_shares))
    assert _found(p, "share_g3") == {}


def test_a_count_and_its_percentage_are_judged_both_ways():
    """One grade's count and its share of the school, "0" and "0%" on the same rows: the share's
    zeros are found through the count, so the count's are found through the share, with the same
    co-zero score as evidence (not one flagged and its twin left as values)."""
    rows = school_rows(seed=4)
    pair = []
    for r in rows:
        total = sum(int(r[g]) for g in GRADES)
        v = int(r["g3"])
        pair.append({"school": r["school"], "g3": r["g3"], "share_g3": "0%" if v == 0 else f"{100 * v / total:.1f}%",
                     "children": r["children"]})
    p = NullPolicy().fit(school_table(pair))
    assert _found(p, "share_g3") == {"0%": ("structural", "not_applicable", False)}
    assert _found(p, "g3") == {"0": ("structural", "not_applicable", False)}
    assert "'share_g3' (1.00)" in p.findings_["g3"][0].evidence and "'g3' (1.00)" in p.findings_["share_g3"][0].evidence
    assert _found(p, "children") == {}


def test_true_zeros_stay_values():
    """Word frequencies (0 continues smoothly), small counts (0, 1, 2 ...), one zero-heavy count
    with no sibling, and sibling counts whose zeros fall on rows at random."""
    rng = np.random.default_rng(2)
    n = 600
    present = rng.random((n, 1)) < 0.3
    freq = np.where(present & (rng.random((n, 4)) < 0.8), np.round(rng.exponential(0.4, (n, 4)), 2), 0.0)
    kids = rng.poisson(1.4, (n, 2))
    loss = np.where(rng.random(n) < 0.15, rng.integers(155, 4356, n), 0)
    random_zero = np.where(rng.random((n, 2)) < 0.3, 0, rng.integers(20, 200, (n, 2)))
    cols = {**{f"w{j}": [f"{v:g}" for v in freq[:, j]] for j in range(4)},
            **{f"kids{j}": [str(v) for v in kids[:, j]] for j in range(2)},
            "loss": [str(v) for v in loss], **{f"r{j}": [str(v) for v in random_zero[:, j]] for j in range(2)}}
    p = NullPolicy().fit(pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()}))
    assert not any(f.kind == "not_applicable" for fs in p.findings_.values() for f in fs), p.findings_


def test_apply_nulls_and_flags_not_applicable_cells_and_the_schema_can_keep_or_impute_them():
    rows = school_rows(60, seed=3) * 5
    table = school_table(rows)
    default = NullPolicy().fit(table)
    out, counts = default.apply(table)
    zero = np.asarray(pc.equal(table.column("g1"), "0"))
    assert zero.any() and out.column("g1").null_count == int(zero.sum())
    na = out.column(NOT_APPLICABLE).to_pylist()
    assert all(("g1" in na[i]) == zero[i] for i in range(table.num_rows))
    assert counts.get("g1", 0) == 0 and not any("g1" in d for d in out.column(DISGUISED).to_pylist())
    assert default.not_applicable_counts(out)["g1"] == int(zero.sum())

    def schema(action):
        cols = [ColumnSchema(name=c, type="integer" if c.startswith("g") else "text", not_applicable=action)
                for c in table.column_names]
        return TableSchema(columns=cols)

    keep, _ = NullPolicy(schema=schema("keep")).fit(table).apply(table)
    assert keep.column("g1").to_pylist() == table.column("g1").to_pylist()
    assert keep.column(NOT_APPLICABLE).to_pylist() == na
    imputed, counts = NullPolicy(schema=schema("impute")).fit(table).apply(table)
    assert imputed.column("g1").null_count == int(zero.sum()) and counts["g1"] == int(zero.sum())
    assert not any("g1" in x for x in imputed.column(NOT_APPLICABLE).to_pylist())


def test_not_applicable_cells_are_never_imputed_and_pass_the_post_suite(tmp_path):
    rows = school_rows(300, seed=4)
    for i in range(0, 300, 7):
        rows[i]["teachers"] = ""  # a real hole: imputed
    raw = school_table(rows).append_column(ROW_ID, pa.array(np.arange(300), pa.int64()))
    policy = NullPolicy().fit(raw)
    schema = infer_schema(raw.drop_columns([ROW_ID]), policy=policy)
    assert schema.column("g1").impute and schema.column("g1").null_values == []
    applied, _ = policy.apply(raw)
    typed, bad = parse_table(applied, schema)
    assert not bad
    kept, failed = Validator(schema).validate(typed)
    assert not failed
    config = AEConfig(hidden=32, depth=2, code=8, epochs=20, min_steps=200, patience=5, extra_sizes=(), random_state=0,
                      without=("trees", "chained", "donors", "gaussian"))
    fitted = fit_model(kept, schema, config=config)
    save_artifact(tmp_path / "m", model=fitted.model, codec=fitted.codec, schema=schema, policy=policy.to_dict(),
                  config=config, metrics=fitted.metrics, error_reference=fitted.result.error_reference)
    out = Imputer(load_artifact(tmp_path / "m", schema=schema)).impute(kept)
    na = out.column(NOT_APPLICABLE).to_pylist()
    g9 = out.column("g9").to_pylist()
    assert all((g9[i] is None) == ("g9" in na[i]) for i in range(out.num_rows))
    assert not any(set(a) & set(b) for a, b in zip(out.column(IMPUTED).to_pylist(), na))
    assert out.column("teachers").null_count == 0  # the real holes are filled
    post, failed = Validator(schema, stage="post").validate(out)
    assert not failed and post.num_rows == out.num_rows
    # without the flags, the same nulls break the post suite: the flags are what it accepts
    _, failed = Validator(schema, stage="post").validate(out.drop_columns([NOT_APPLICABLE]))
    assert failed and "expect_column_values_to_not_be_null(g" in failed[0].reason


def test_a_value_covering_most_of_a_column_is_a_suspect_kept_unless_pinned():
    rng = np.random.default_rng(5)
    n = 400
    loss = [str(v) if rng.random() < 0.06 else "0" for v in rng.integers(1500, 2000, n)]
    status = ["N/A" if rng.random() < 0.6 else str(v) for v in rng.integers(1, 90, n)]
    table = pa.table({"loss": pa.array(loss), "status": pa.array(status)})
    p = NullPolicy().fit(table)
    assert _found(p, "loss") == {"0": ("sentinel", "missing", True)}
    assert _found(p, "status") == {"N/A": ("token", "missing", True)}
    assert "suspect" in p.findings_["loss"][0].evidence and p.findings_["loss"][0].share > 0.9
    out, counts = p.apply(table)
    assert out.column("loss").null_count == 0 and out.column("status").null_count == 0 and not any(counts.values())
    assert {f.column for f in p.suspects()} == {"loss", "status"}
    assert p.rules_for("loss") == {}  # an inferred schema does not pin a suspect
    pinned = TableSchema(columns=[ColumnSchema(name="loss", type="integer", null_values=["0"]),
                                  ColumnSchema(name="status", type="integer", null_values=["N/A"])])
    out, counts = NullPolicy(schema=pinned).fit(table).apply(table)
    assert counts == {"loss": loss.count("0"), "status": status.count("N/A")}


def test_detect_json_says_the_kind_share_and_suspect(tmp_path, capsys):
    rows = school_rows(200, seed=6)
    names = list(rows[0])
    path = write(tmp_path / "schools.csv", "\n".join([",".join(names)] + [",".join(r[c] for c in names) for r in rows]) + "\n")
    assert main(["detect", str(path), "--json", str(tmp_path / "d.json")]) == 0
    out = json.loads((tmp_path / "d.json").read_text())
    g5 = out["columns"]["g5"][0]
    assert g5["value"] == "0" and g5["detector"] == "structural" and g5["kind"] == "not_applicable"
    assert 0 < g5["share"] < 1 and g5["suspect"] is False
    assert "not_applicable" in capsys.readouterr().out


@pytest.mark.slow
def test_a_local_run_keeps_not_applicable_cells_null_and_reports_them(tmp_path):
    from deltalake import DeltaTable

    from lakefill.pipelines.config import JobConfig
    from lakefill.pipelines.local_job import run_local, train_to_dir
    from lakefill.schema import dump_schema

    rows = school_rows(300, seed=7)
    for i in range(0, 300, 11):
        rows[i]["teachers"] = "N/A"
    names = list(rows[0])
    path = write(tmp_path / "schools.csv", "\n".join([",".join(names)] + [",".join(r[c] for c in names) for r in rows]) + "\n")
    raw = read_raw(path)
    schema = infer_schema(raw.table.drop_columns([ROW_ID]), name="schools", policy=NullPolicy().fit(raw.table))
    write(tmp_path / "schools.yaml", dump_schema(schema))
    config = AEConfig(hidden=32, depth=2, code=8, epochs=20, min_steps=200, patience=5, extra_sizes=(), random_state=0,
                      without=("trees", "chained", "donors", "gaussian"))
    train_to_dir(str(path), schema, tmp_path / "model", config=config)
    job = JobConfig.model_validate({"input": str(path), "schema": str(tmp_path / "schools.yaml"),
                                    "model": str(tmp_path / "model"), "output": str(tmp_path / "out"), "run_id": "na"})
    outcome = run_local(job, log=lambda *_: None)
    table = DeltaTable(outcome.table).to_pyarrow_table().sort_by(ROW_ID)
    assert table.num_rows == 300 and outcome.counts["rows_quarantined"] == 0
    zero = np.asarray([r["g10"] == "0" for r in rows])
    assert np.array_equal(np.asarray(pc.is_null(table.column("g10"))), zero)
    assert all(("g10" in na) == z for na, z in zip(table.column(NOT_APPLICABLE).to_pylist(), zero))
    assert table.column("teachers").null_count == 0
    report = json.loads((tmp_path / "out" / "reports" / "na" / "report.json").read_text())
    g10 = report["detection"]["columns"]["g10"][0]
    assert g10["kind"] == "not_applicable" and g10["detector"] == "structural"
    page = (tmp_path / "out" / "reports" / "na" / "report.html").read_text()
    assert "not applicable (never imputed)" in page and "structural" in page
