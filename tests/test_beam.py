"""The Beam stage on the Direct runner: real pipelines, real Delta tables."""

import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from deltalake import DeltaTable

from conftest import EXAMPLES, demo_job
from lakefill.pipelines.beam_pipeline import run_beam
from lakefill.pipelines.local_job import run_local
from lakefill.transforms.beam import COUNTERS, QUARANTINE, LakefillModelHandler, RunStep
from lakefill.transforms.detect import NullPolicy
from lakefill.transforms.impute import IMPUTED, Imputer
from lakefill.models.artifact import load_artifact
from lakefill.transforms.io import ROW_ID, read_raw
from lakefill.transforms.plan import Detect, Refine, Validate
from lakefill.schema import load_schema
from lakefill.transforms.stage import QuarantineExceeded

pytestmark = pytest.mark.slow
SCHEMA = load_schema(EXAMPLES / "customers.schema.yaml")
ROWS = 602  # records in customers.csv
BAD = {600: "ragged row", 601: "expect_column_values_to_be_in_set(region)"}


def _read(uri):
    return DeltaTable(str(uri)).to_pyarrow_table().sort_by(ROW_ID)


@pytest.fixture(scope="module")
def beam_run(demo_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("beam")
    cfg = demo_job(tmp, demo_model, batch_size=128)
    outcome = run_beam(cfg, ["--direct_num_workers=1"])
    return cfg, outcome


def test_every_row_lands_once_in_the_table_or_the_quarantine(beam_run):
    cfg, outcome = beam_run
    table, quarantine = _read(outcome.table), _read(outcome.quarantine)
    ids = table.column(ROW_ID).to_pylist()
    assert len(ids) == len(set(ids)) == ROWS - len(BAD)
    assert set(ids) | set(BAD) == set(range(ROWS))
    reasons = dict(zip(quarantine.column(ROW_ID).to_pylist(), quarantine.column("reason").to_pylist()))
    assert set(reasons) == set(BAD)
    for row, why in BAD.items():
        assert why in reasons[row]
    assert set(quarantine.column("_lf_run_id").to_pylist()) == {"r1"}
    # provenance, and every imputable hole filled
    assert set(table.column("_lf_run_id").to_pylist()) == {"r1"}
    assert set(table.column("_lf_method").to_pylist()) <= {"none", "ae", "donor", "reverse"}
    for col in SCHEMA.columns:
        if col.impute and col.type != "id":
            assert table.column(col.name).null_count == 0, col.name
    report = json.loads(open(outcome.report).read())
    c = report["counts"]
    assert c["rows_in"] == ROWS and c["rows_written"] + c["rows_quarantined"] == ROWS
    assert report["engine"] == "beam" and report["metrics"]["cells_imputed"] == c["cells_imputed"] > 0
    assert sum(report["confidence_histogram"]["counts"]) == c["rows_written"]
    assert report["metrics"]["disguised_nulls:blood_pressure"] == c["disguised_nulls_replaced"]["blood_pressure"] > 0
    # the counters the steps gave FinalizeRun are the ones Beam's metrics counted
    beam_metrics = report["metrics"]["beam"]
    assert beam_metrics["cells_imputed"] == c["cells_imputed"] and beam_metrics["rows_in"] == ROWS
    assert beam_metrics["disguised_nulls:blood_pressure"] == c["disguised_nulls_replaced"]["blood_pressure"]
    assert report["metrics"]["steps"] == ["detect", "validate_pre", "impute", "refine", "validate_post", "finish"]


def test_beam_and_the_local_job_write_the_same_table(beam_run, demo_model, tmp_path):
    cfg, outcome = beam_run
    local = run_local(demo_job(tmp_path, demo_model, batch_size=1000), log=lambda *_: None)
    a, b = _read(outcome.table), _read(local.table)
    assert a.column_names == b.column_names
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            np.testing.assert_allclose(x.to_numpy(), y.to_numpy(), rtol=1e-6, atol=1e-6, err_msg=name)
        else:
            assert x.to_pylist() == y.to_pylist(), name


def test_rerun_with_the_same_run_id_changes_nothing(beam_run):
    cfg, outcome = beam_run
    before_t, before_q = DeltaTable(outcome.table), DeltaTable(outcome.quarantine)
    versions = (before_t.version(), before_q.version())
    again = run_beam(cfg, [])
    assert not again.committed
    assert (DeltaTable(outcome.table).version(), DeltaTable(outcome.quarantine).version()) == versions
    assert _read(outcome.table).num_rows == ROWS - len(BAD)
    # the second run's uncommitted files were removed: the folder holds only committed files
    files = {p.name for p in Path(outcome.table).rglob("*.parquet")}
    assert files == {u.split("/")[-1] for u in DeltaTable(outcome.table).file_uris()}


class PoisonedHandler(LakefillModelHandler):
    """Fails on any batch that holds row 13, as a corrupt row might."""

    def run_inference(self, batch, model, inference_args=None):
        for t in batch:
            if 13 in t.column(ROW_ID).to_pylist():
                raise RuntimeError("poisoned row in this batch")
        return super().run_inference(batch, model, inference_args)


def test_a_poisoned_row_goes_to_quarantine_and_the_job_completes(demo_model, tmp_path):
    cfg = demo_job(tmp_path, demo_model, batch_size=50, run_id="poison")
    handler = PoisonedHandler(cfg.model, SCHEMA.model_dump(by_alias=True), device="cpu", max_batches=2)
    outcome = run_beam(cfg, [], handler=handler)
    table, quarantine = _read(outcome.table), _read(outcome.quarantine)
    q = dict(zip(quarantine.column(ROW_ID).to_pylist(), quarantine.column("reason").to_pylist()))
    assert set(q) == set(BAD) | {13}
    assert "RuntimeError: poisoned row in this batch" in q[13] and q[13].startswith("impute:")
    assert json.loads(quarantine.filter(pc.equal(quarantine.column(ROW_ID), 13)).column("record")[0].as_py())["customer_id"]
    assert set(table.column(ROW_ID).to_pylist()) == set(range(ROWS)) - set(q)


def test_over_the_quarantine_share_fails_and_commits_no_table(demo_model, tmp_path):
    cfg = demo_job(tmp_path, demo_model, max_quarantine_share=0.001, run_id="strict")
    with pytest.raises(QuarantineExceeded, match="over the max_quarantine_share"):
        run_beam(cfg, [])
    assert not (tmp_path / "out" / "table" / "_delta_log").exists()
    report = json.loads((tmp_path / "out" / "reports" / "strict" / "report.json").read_text())
    assert report["committed"] is False and report["counts"]["rows_quarantined"] == 2


def test_plan_steps_as_dofns_route_bad_rows_with_reasons_and_count():
    raw = read_raw(EXAMPLES / "customers.csv").table.slice(590, 12)
    policy = NullPolicy(schema=SCHEMA).fit(read_raw(EXAMPLES / "customers.csv").table)
    schema = SCHEMA.model_dump(by_alias=True)
    with BeamTestPipeline() as p:
        typed = (p | beam.Create([raw]) | "detect" >> beam.ParDo(RunStep(Detect(policy.to_dict(), schema))).with_outputs(
            QUARANTINE, COUNTERS, main="main"))
        checked = typed.main | "validate" >> beam.ParDo(RunStep(Validate(schema, "pre"))).with_outputs(QUARANTINE, COUNTERS, main="main")
        good_ids = checked.main | beam.FlatMap(lambda t: t.column(ROW_ID).to_pylist())
        bad = checked[QUARANTINE] | beam.FlatMap(lambda rows: [(q.row_id, q.reason.split(":")[0]) for q in rows])
        counts = checked[COUNTERS] | beam.Map(lambda c: (c["validation:pre:rows"], c["validation:pre:rows_failed"]))
        assert_that(good_ids, equal_to([r for r in raw.column(ROW_ID).to_pylist() if r != 601]), label="good")
        assert_that(bad, equal_to([(601, "expect_column_values_to_be_in_set(region)")]), label="bad")
        assert_that(counts, equal_to([(11, 1)]), label="counters")  # row 600 (ragged) never reached the step


def test_a_step_that_needs_the_model_refuses_to_run_without_one():
    with pytest.raises(Exception, match="uses the model: give RunStep a LakefillModelHandler"):
        with BeamTestPipeline() as p:
            _ = p | beam.Create([read_raw(EXAMPLES / "customers.csv").table.slice(0, 5)]) | beam.ParDo(
                RunStep(Refine(0.5)))


def test_post_validation_quarantines_the_rows_that_fail_it(beam_run):
    """A post-validation failure lands in quarantine with its reason; no row is lost or doubled."""
    cfg, outcome = beam_run
    done = _read(outcome.table).drop_columns(["_lf_run_id"])
    ids = done.column(ROW_ID).to_pylist()
    broken_row = ids[-5]
    age = done.column("age")
    done = done.set_column(done.column_names.index("age"), "age",
                           pc.if_else(pc.equal(done.column(ROW_ID), broken_row), pa.scalar(None, age.type), age))
    batches = [done.slice(i, 50) for i in range(0, done.num_rows, 50)]
    with BeamTestPipeline() as p:
        out = (p | beam.Create(batches, reshuffle=False)
               | beam.ParDo(RunStep(Validate(SCHEMA.model_dump(by_alias=True), "post"))).with_outputs(
                   QUARANTINE, COUNTERS, main="main"))
        kept = out.main | beam.FlatMap(lambda t: t.column(ROW_ID).to_pylist())
        bad = out[QUARANTINE] | beam.FlatMap(lambda rows: [(q.row_id, q.reason.split(":")[0]) for q in rows])
        assert_that(kept, equal_to([r for r in ids if r != broken_row]), label="kept")
        assert_that(bad, equal_to([(broken_row, "expect_column_values_to_not_be_null(age)")]), label="bad")


def test_the_refine_step_gives_what_one_call_on_all_rows_gives(beam_run):
    """Each row's refinement does not depend on the rows beside it: the step on small batches
    in a DoFn (the model from the handler) gives what one call on all the rows gives."""
    cfg, outcome = beam_run
    rows = _read(outcome.table).drop_columns(["_lf_run_id"])
    rows = rows.filter(pc.greater(pc.list_value_length(rows.column(IMPUTED)), 0))
    assert rows.num_rows > 100
    batches = [rows.slice(i, 30) for i in range(0, rows.num_rows, 30)]
    want = Imputer(load_artifact(cfg.model, schema=SCHEMA)).refine(rows).sort_by(ROW_ID)
    assert "reverse" in want.column("_lf_method").to_pylist()  # the refinement changed some rows
    handler = LakefillModelHandler(cfg.model, SCHEMA.model_dump(by_alias=True), device="cpu")

    def same_rows(tables):  # floats to 1e-6: a matrix product's rounding may depend on the batch's size
        got = pa.concat_tables(tables).sort_by(ROW_ID)
        assert got.column(ROW_ID).to_pylist() == want.column(ROW_ID).to_pylist()
        for name in want.column_names:
            a, b = got.column(name), want.column(name)
            if pa.types.is_floating(b.type):
                np.testing.assert_allclose(a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False),
                                           rtol=1e-6, atol=1e-6, err_msg=name)
            else:
                assert a.to_pylist() == b.to_pylist(), name

    with BeamTestPipeline() as p:
        out = (p | beam.Create(batches, reshuffle=False)
               | beam.ParDo(RunStep(Refine(threshold=1.01), handler)).with_outputs(QUARANTINE, COUNTERS, main="main"))
        assert_that(out.main, same_rows, label="rows")
        assert_that(out[COUNTERS] | beam.Map(lambda c: c["rows_reverse_tried"]) | beam.CombineGlobally(sum),
                    equal_to([rows.num_rows]), label="tried")


def test_spark_reads_the_beam_table_back_with_the_same_rows(beam_run, spark):
    cfg, outcome = beam_run
    files = DeltaTable(outcome.table).file_uris()
    df = spark.read.parquet(*files)
    got = df.toPandas().sort_values(ROW_ID).reset_index(drop=True)
    want = _read(outcome.table).to_pandas()
    assert list(got[ROW_ID]) == list(want[ROW_ID])
    for col in ("customer_id", "age", "income", "segment", "_lf_method", "_lf_run_id"):
        assert got[col].tolist() == want[col].tolist(), col
    np.testing.assert_allclose(got["_lf_confidence"], want["_lf_confidence"])


def test_the_model_is_loaded_once_per_process_for_every_step_that_uses_it(demo_model, tmp_path):
    """RunInference, the refine step and the failure isolation share one load per process
    (counted as ``model_loads``); the cache is keyed by the artifact's hash: the same artifact in
    another folder is the same model, a retrained one (another manifest) is loaded on its own."""
    import shutil

    from lakefill.transforms import modelcache

    schema = SCHEMA.model_dump(by_alias=True)
    modelcache.clear()
    first = LakefillModelHandler(str(demo_model), schema, device="cpu").load_model()
    again = LakefillModelHandler(str(demo_model), schema, device="cpu", max_batches=1).load_model()
    assert first is again and modelcache.take_loads() == 1
    shutil.copytree(demo_model, tmp_path / "copy")
    assert LakefillModelHandler(str(tmp_path / "copy"), schema, device="cpu").load_model() is first
    manifest = json.loads((tmp_path / "copy" / "manifest.json").read_text())
    (tmp_path / "copy" / "manifest.json").write_text(json.dumps(manifest))  # the same model written anew
    other = LakefillModelHandler(str(tmp_path / "copy"), schema, device="cpu").load_model()
    assert other is not first and modelcache.take_loads() == 1


def test_a_shared_model_is_loaded_once_for_all_processes_and_gives_the_same_table(beam_run, demo_model, tmp_path):
    """share_model: Beam's MultiProcessShared serves one model to the SDK processes (two here)."""
    import json as _json

    cfg, outcome = beam_run
    shared = run_beam(demo_job(tmp_path, demo_model, batch_size=128, share_model=True),
                      ["--direct_num_workers=2", "--direct_running_mode=multi_processing"], log=lambda *_: None)
    report = _json.loads(Path(shared.report).read_text())
    assert report["metrics"]["model_loads"] == 1
    a, b = _read(outcome.table), _read(shared.table)
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            np.testing.assert_allclose(x.to_numpy(), y.to_numpy(), rtol=1e-6, atol=1e-6, err_msg=name)
        elif name != "_lf_run_id":
            assert x.to_pylist() == y.to_pylist(), name


def test_a_shared_model_is_reached_through_beams_proxy_and_answers_as_the_model_does(demo_model):
    from lakefill.transforms import modelcache

    schema = SCHEMA.model_dump(by_alias=True)
    local = LakefillModelHandler(str(demo_model), schema, device="cpu").load_model()
    shared = LakefillModelHandler(str(demo_model), schema, device="cpu", share=True).load_model()
    assert not isinstance(shared, modelcache.LoadedModel) and shared is not local  # a proxy to the machine's one copy
    assert shared is LakefillModelHandler(str(demo_model), schema, device="cpu", share=True).load_model()
    assert shared.take_load() == 0  # counted once, when it was loaded
    policy = NullPolicy(schema=SCHEMA).fit(read_raw(EXAMPLES / "customers.csv").table)
    typed = Detect(policy.to_dict(), schema).run(read_raw(EXAMPLES / "customers.csv").table.slice(0, 50), None).table
    a, b = local.impute(typed), shared.impute(typed)
    assert a.equals(b)
    low = a.filter(pc.greater(pc.list_value_length(a.column(IMPUTED)), 0))
    assert local.refine(low).equals(shared.refine(low))


def test_the_training_task_draws_its_sample_with_a_combine_and_trains_on_it(tmp_path):
    """task=train on Beam: the workers read the input and keep their bottom-k, the combine merges
    them into the rows the local sampler draws, one worker fits on them."""
    from lakefill.pipelines.beam_pipeline import SampleRows, run_beam_training
    from lakefill.transforms.sample import BottomK, read_sample

    local, info = read_sample(EXAMPLES / "customers.csv", train_rows=250, seed=4)
    fn = SampleRows(250, 4)
    halves = [fn.add_input(fn.create_accumulator(), ("rows", part)) for part in
              (local.table.slice(0, 100), local.table.slice(100))]
    assert fn.extract_output(fn.merge_accumulators(halves)).table().equals(local.table)
    cfg = demo_job(tmp_path, tmp_path / "model", training={"train_rows": 250, "seed": 4,
                                                           "without": ["gaussian", "trees", "chained", "donors"]})
    run_beam_training(cfg, ["--direct_num_workers=1"])
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["metrics"]["training_sample"] == info.to_dict() and info.rows == 250
    assert isinstance(fn.create_accumulator(), BottomK)
