"""The stage plan: one list of steps, run by every engine (the contract test), and its parts."""

import json
import sys
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from conftest import EXAMPLES, demo_job
from lakefill.schema import load_schema
from lakefill.transforms.io import ROW_ID, Quarantined, read_raw
from lakefill.transforms.plan import Runtime, Step, StepOutput, isolate, run_steps, stage_plan
from lakefill.transforms.detect import NullPolicy

SCHEMA = load_schema(EXAMPLES / "customers.schema.yaml")
ENGINES = ("local", "beam", "spark")


class HoldBackUnder25(Step):
    """A user's own step: rows whose age is under 25 are held back with a reason, and counted."""

    name = "hold_back_under_25"

    def run(self, batch, rt):
        young = pc.fill_null(pc.less(batch.column("age"), 25), False)
        held = batch.filter(young)
        bad = [Quarantined(r["_lf_row_id"], f"{self.name}: age {r['age']} under 25", self.name,
                           json.dumps({k: v for k, v in r.items() if not k.startswith("_lf_") or k == ROW_ID},
                                      default=str))
               for r in held.select([ROW_ID, "age"]).to_pylist()]
        return StepOutput(batch.filter(pc.invert(young)), bad, Counter({"rows_under_25": held.num_rows}))


def _read(uri):
    return DeltaTable(str(uri)).to_pyarrow_table().sort_by(ROW_ID)


def _same(a: pa.Table, b: pa.Table, what: str):
    assert a.column_names == b.column_names, what
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            np.testing.assert_allclose(x.to_numpy(zero_copy_only=False), y.to_numpy(zero_copy_only=False),
                                       rtol=1e-6, atol=1e-6, err_msg=f"{what}: {name}")
        else:
            assert x.to_pylist() == y.to_pylist(), f"{what}: {name}"


@pytest.fixture(scope="module")
def runs(demo_model, spark, tmp_path_factory):
    """The demo job with one extra step of the user's, on every engine: the step is given to the
    plan once; no engine knows it."""
    from lakefill.pipelines.beam_pipeline import run_beam
    from lakefill.pipelines.local_job import run_local
    from lakefill.pipelines.spark_job import run_spark
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Spark's workers cannot import the tests
    steps = [HoldBackUnder25()]
    out = {}
    for engine in ENGINES:
        cfg = demo_job(tmp_path_factory.mktemp(engine), demo_model, batch_size=128, run_id="contract",
                       max_quarantine_share=0.5)
        quiet = lambda *_: None  # noqa: E731
        if engine == "local":
            out[engine] = run_local(cfg, extra_steps=steps, log=quiet)
        elif engine == "beam":
            out[engine] = run_beam(cfg, ["--direct_num_workers=1"], extra_steps=steps, log=quiet)
        else:
            out[engine] = run_spark(cfg, spark=spark, extra_steps=steps, log=quiet)
    return out


@pytest.mark.slow
def test_every_engine_runs_the_plan_with_the_users_step(runs):
    want = ["detect", "validate_pre", "impute", "refine", "validate_post", "hold_back_under_25", "finish"]
    for engine, outcome in runs.items():
        report = json.loads(open(outcome.report).read())
        assert report["metrics"]["steps"] == want, engine
        assert report["counts"]["rows_in"] == 602, engine
        assert report["metrics"]["rows_under_25"] > 0, engine
        assert report["metrics"].get("model_loads", 0) <= 2, engine  # once per worker process at most
        q = _read(outcome.quarantine)
        held = [r for r in q.to_pylist() if r["stage"] == "hold_back_under_25"]
        assert len(held) == report["metrics"]["rows_under_25"], engine
        assert all("under 25" in r["reason"] for r in held)
        assert report["counts"]["quarantined_by_reason"]["hold_back_under_25"] == len(held), engine
        table = _read(outcome.table)
        assert pc.min(table.column("age")).as_py() >= 25, engine


@pytest.mark.slow
def test_the_engines_give_the_same_table_quarantine_and_counters(runs):
    base = runs["local"]
    base_report = json.loads(open(base.report).read())
    for engine in ("beam", "spark"):
        other = runs[engine]
        _same(_read(base.table), _read(other.table), f"table, local vs {engine}")
        _same(_read(base.quarantine), _read(other.quarantine), f"quarantine, local vs {engine}")
        report = json.loads(open(other.report).read())
        assert report["counts"] == base_report["counts"], engine
        assert report["validation"] == base_report["validation"], engine
        # every counter but the model loads (a warm worker process loads none)
        counters = lambda r: {k: v for k, v in r["metrics"].items() if isinstance(v, int) and k != "model_loads"}  # noqa: E731
        assert counters(report) == counters(base_report), engine


def test_step_names_are_unique():
    policy = NullPolicy(schema=SCHEMA).fit(read_raw(EXAMPLES / "customers.csv").table)
    with pytest.raises(ValueError, match="unique.*hold_back_under_25"):
        stage_plan(schema=SCHEMA, policy=policy, run_id="x", extra_steps=[HoldBackUnder25(), HoldBackUnder25()])
    plan = stage_plan(schema=SCHEMA, policy=policy, run_id="x", refine=False)
    assert plan.names == ["detect", "validate_pre", "impute", "validate_post", "finish"]


def test_a_failing_batch_is_halved_until_the_failing_rows_are_alone():
    raw = read_raw(EXAMPLES / "customers.csv").table.slice(0, 37)
    calls = []

    def fn(t):
        calls.append(t.num_rows)
        if 13 in t.column(ROW_ID).to_pylist() or 30 in t.column(ROW_ID).to_pylist():
            raise RuntimeError("cannot do this row")
        return StepOutput(t, [], Counter({"ok": t.num_rows}))

    out = isolate(fn, raw, "impute")
    assert sorted(q.row_id for q in out.quarantined) == [13, 30]
    assert all(q.reason == "impute: RuntimeError: cannot do this row" and q.stage == "impute" for q in out.quarantined)
    assert json.loads(out.quarantined[0].record)["customer_id"] == raw.column("customer_id")[13].as_py()
    assert out.table.column(ROW_ID).to_pylist() == [r for r in range(37) if r not in (13, 30)]
    assert out.counters["ok"] == 35 and max(calls) == 37 and len(calls) < 37  # halving, not row by row


def test_run_steps_stops_when_a_batch_empties_and_sums_counters():
    class DropAll(Step):
        name = "drop_all"

        def run(self, batch, rt):
            return StepOutput(batch.slice(0, 0), [], Counter({"dropped": batch.num_rows}))

    class Never(Step):
        name = "never"

        def run(self, batch, rt):
            raise AssertionError("a step after an empty batch must not run")

    raw = read_raw(EXAMPLES / "customers.csv").table.slice(0, 10)
    timings = {}
    out = run_steps([DropAll(), Never()], raw, Runtime(), timings=timings)
    assert out.table.num_rows == 0 and out.counters == Counter({"dropped": 10}) and list(timings) == ["drop_all"]


def test_a_step_that_needs_the_model_says_so_without_one():
    from lakefill.transforms.plan import Impute

    with pytest.raises(RuntimeError, match="needs the model"):
        Impute().run(read_raw(EXAMPLES / "customers.csv").table.slice(0, 3), Runtime())


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_a_validation_run_reads_no_model_and_fills_nothing(engine, request, tmp_path):
    """``impute: false``: detect, pre-validate, write. The model named does not exist and is not
    needed; disguised nulls become nulls and stay null; nothing is imputed or refined."""
    from conftest import run_engine

    cfg = demo_job(tmp_path, tmp_path / "no-model", impute=False, run_id="validate-only")
    outcome = run_engine(engine, cfg, request)
    report = json.loads(open(outcome.report).read())
    assert report["metrics"]["steps"] == ["detect", "validate_pre", "finish"]
    assert report["committed"] and report["counts"]["rows_written"] == 600
    assert report["counts"]["cells_imputed"] == 0 and report["metrics"].get("model_loads", 0) == 0
    assert sum(report["counts"]["disguised_nulls_replaced"].values()) > 0
    table = _read(outcome.table)
    assert "_lf_imputed" not in table.column_names and table.column("blood_pressure").null_count > 0
    assert not (tmp_path / "no-model").exists()


@pytest.mark.slow
def test_a_bf16_run_fills_the_same_cells_close_to_fp32_and_the_same_on_every_engine(demo_model, request, tmp_path):
    """``precision: bf16``: the forward pass under bfloat16 autocast. The same cells are filled,
    each close to the fp32 fill; the three engines give the same bf16 table (same model, same
    input, same machine)."""
    from conftest import run_engine

    fp32 = _read(run_engine("local", demo_job(tmp_path / "a", demo_model, run_id="fp32"), request).table)
    tables = {}
    for engine in ENGINES:
        outcome = run_engine(engine, demo_job(tmp_path / engine, demo_model, run_id="bf16", precision="bf16",
                                              refine=False), request)
        assert json.loads(open(outcome.report).read())["config"]["precision"] == "bf16"
        tables[engine] = _read(outcome.table)
    bf16 = tables["local"]
    for engine in ("beam", "spark"):
        for name in bf16.column_names:
            if name != "_lf_run_id":
                assert tables[engine].column(name).to_pylist() == bf16.column(name).to_pylist(), (engine, name)
    assert bf16.column(ROW_ID).to_pylist() == fp32.column(ROW_ID).to_pylist()
    assert bf16.column("_lf_imputed").to_pylist() == fp32.column("_lf_imputed").to_pylist()
    filled = imputed_cells = 0
    for name in ("age", "income", "blood_pressure", "weight_kg"):
        mask = np.array([name in (v or []) for v in fp32.column("_lf_imputed").to_pylist()])
        a = fp32.column(name).to_numpy(zero_copy_only=False).astype(float)
        b = bf16.column(name).to_numpy(zero_copy_only=False).astype(float)
        span = np.nanmax(a) - np.nanmin(a)
        assert mask.any() and np.all(np.abs(a[mask] - b[mask]) <= 0.03 * span), name
        assert np.array_equal(a[~mask], b[~mask], equal_nan=True), name  # observed cells untouched
        filled += int((a[mask] != b[mask]).sum())
        imputed_cells += int(mask.sum())
    assert filled > 0  # bf16 is not fp32 (a test that could not tell them apart would prove nothing)
    conf_a, conf_b = fp32.column("_lf_confidence").to_numpy(), bf16.column("_lf_confidence").to_numpy()
    assert np.max(np.abs(conf_a - conf_b)) < 0.05
