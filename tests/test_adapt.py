"""The side stage's adaptation (lakefill.models.adapt): the networks fine-tuned on a run's
observed cells, used by refine only where the check rows and each row's held-back cells say so."""

import shutil
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from lakefill.models.adapt import AdaptConfig, adapt_model
from lakefill.models.artifact import load_artifact, save_artifact
from lakefill.models.reverse import RowRandom, held_back
from lakefill.models.training import fit_model
from lakefill.transforms.impute import CHECK_AFTER, CHECK_BEFORE, IMPUTED, METHOD, Imputer
from lakefill.transforms.io import ROW_ID

from tests.test_models import SCHEMA, SMALL, make_table

ADAPT = AdaptConfig(steps=150, batch_size=64)


@pytest.fixture(scope="module")
def drifted(tmp_path_factory):
    """A model trained on the rows with x < 0.3 and the rows with x >= 0.3 (holes in them) to fill."""
    full, masked, hide = make_table(n=1200, seed=3, missing=0.2)
    x = full.column("x").to_numpy()
    low, high = np.nonzero(x < 0.3)[0], np.nonzero(x >= 0.3)[0]
    # the networks' adaptation, measured without the chained round: its trees fill these drifted rows
    # well already (weight 0.95 here: direct error 1.87 against 2.30 without it) and leave less to refine
    config = replace(SMALL, without=("chained",))
    fitted = fit_model(full.take(pa.array(low)).append_column(ROW_ID, pa.array(low, pa.int64())), SCHEMA, config=config)
    d = save_artifact(tmp_path_factory.mktemp("m") / "m", model=fitted.model, codec=fitted.codec, schema=SCHEMA,
                      policy=None, config=config, metrics={}, error_reference=fitted.result.error_reference)
    return full.take(pa.array(high)), masked.take(pa.array(high)), hide[high], load_artifact(d)


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_adaptation_repeats_whatever_the_rows_order(drifted):
    _, masked, _, art = drifted
    imp = Imputer(art)
    a, report = imp.adapt(masked, ADAPT)
    b, _ = imp.adapt(masked.take(np.arange(masked.num_rows)[::-1]), ADAPT)
    assert report["used"] and report["check_loss_after"] < report["check_loss_before"]
    assert report["rows_fitted"] + report["rows_checked"] <= masked.num_rows
    assert torch.equal(_weights(a), _weights(b))
    assert not torch.equal(_weights(a), _weights(art.model))  # the trained model is untouched: a copy moved
    assert a.trees is art.model.trees and a.donors is art.model.donors


def test_a_cap_on_rows_keeps_a_hashed_sample_with_rows_to_fit_and_to_check(drifted):
    _, masked, _, art = drifted
    imp = Imputer(art)
    _, report = imp.adapt(masked, AdaptConfig(steps=5, max_rows=100))
    assert report["rows_offered"] == masked.num_rows > 100
    assert report["rows_fitted"] + report["rows_checked"] <= 100 and 60 < report["rows_fitted"] < 95
    _, again = imp.adapt(masked.take(np.arange(masked.num_rows)[::-1]), AdaptConfig(steps=5, max_rows=100))
    assert again == {**report, "seconds": again["seconds"]}


def test_adaptation_never_learns_the_cells_refinement_checks_on(drifted):
    """Changing the values of the cells each row holds back changes nothing in the adapted networks."""
    _, masked, _, art = drifted
    imp = Imputer(art)
    enc = art.codec.encode(masked)
    keys = masked.column(ROW_ID).to_numpy()
    held = held_back(torch.from_numpy(enc.observed), RowRandom(keys, imp.reverse.random_state), imp.reverse.holdout).numpy()
    assert held.any()
    values, t_num = enc.values.copy(), enc.targets_num.copy()
    n_num = art.model.n_num
    for j, (a, b) in enumerate(art.model.col_slices[:n_num]):
        values[held[:, j], a] += 5.0
        t_num[held[:, j], j] += 5.0
    one, r1 = adapt_model(art.model, enc.values, enc.observed, enc.targets_num, enc.targets_cat, row_keys=keys, config=ADAPT)
    two, r2 = adapt_model(art.model, values, enc.observed, t_num, enc.targets_cat, row_keys=keys, config=ADAPT)
    assert r1["used"] and r1 == {**r2, "seconds": r1["seconds"]}
    assert torch.equal(_weights(one), _weights(two))


def test_an_adaptation_that_does_not_help_is_not_used(drifted):
    _, masked, _, art = drifted
    model, report = Imputer(art).adapt(masked, AdaptConfig(steps=3, lr=5.0))
    assert model is art.model and not report["used"] and "check rows" in report["reason"]


def test_refine_through_the_adapted_model_beats_the_direct_fill_on_drifted_rows(drifted):
    full, masked, hide, art = drifted
    imp = Imputer(art)
    direct = imp.impute(masked)
    adapted, _ = imp.adapt(direct, ADAPT)
    rows = pc.greater(pc.list_value_length(direct.column(IMPUTED)), 0)
    low, truth, h = direct.filter(rows), full.filter(rows), hide[np.asarray(rows)]
    plain, side = imp.refine(low), imp.refine(low, adapted=adapted)

    def error(t):
        return float(np.mean([np.abs(t.column(c).to_numpy() - truth.column(c).to_numpy())[h[:, j]].mean()
                              for j, c in ((1, "y"), (2, "k"))]))
    assert error(side) < 0.9 * error(low) and error(side) < error(plain)
    kept = np.asarray(side.column(METHOD).to_pylist()) == "reverse"
    assert kept.any()
    before, after = side.column(CHECK_BEFORE).to_numpy(zero_copy_only=False), side.column(CHECK_AFTER).to_numpy(zero_copy_only=False)
    assert np.all(after[kept] < before[kept])
    # a row's result does not depend on the rows refined with it
    parts = pa.concat_tables([imp.refine(low.slice(0, 7), adapted=adapted), imp.refine(low.slice(7), adapted=adapted)])
    assert parts.column(METHOD).to_pylist() == side.column(METHOD).to_pylist()
    np.testing.assert_allclose(parts.column("y").to_numpy(), side.column("y").to_numpy(), rtol=1e-6, atol=1e-6)


def test_adapt_and_refine_with_an_adapted_model_need_row_ids(drifted):
    _, masked, _, art = drifted
    imp = Imputer(art)
    with pytest.raises(ValueError, match=ROW_ID):
        imp.adapt(masked.drop_columns([ROW_ID]))
    direct = imp.impute(masked).drop_columns([ROW_ID])
    with pytest.raises(ValueError, match=ROW_ID):
        imp.refine(direct, adapted=art.model)
    with pytest.raises(ValueError):
        AdaptConfig(check_share=1.0)


def _drift_job(tmp_path, drifted_files, **extra):
    from lakefill.pipelines.config import JobConfig

    csv, schema, model = drifted_files
    return JobConfig.model_validate({"input": str(csv), "schema": str(schema), "model": str(model),
                                     "output": str(tmp_path / "out"), "run_id": "r1", "confidence_threshold": 0.5,
                                     "max_quarantine_share": 1.0, **extra})


@pytest.fixture(scope="module")
def drifted_files(tmp_path_factory):
    """The drifted rows as a CSV with its schema, and the model trained on the other rows, on disk."""
    import json

    import pyarrow.csv as pacsv

    full, masked, hide = make_table(n=1200, seed=3, missing=0.2)
    x = full.column("x").to_numpy()
    low, high = np.nonzero(x < 0.3)[0], np.nonzero(x >= 0.3)[0]
    folder = tmp_path_factory.mktemp("drift")
    fitted = fit_model(full.take(pa.array(low)).append_column(ROW_ID, pa.array(low, pa.int64())), SCHEMA, config=SMALL)
    save_artifact(folder / "model", model=fitted.model, codec=fitted.codec, schema=SCHEMA, policy=None, config=SMALL,
                  metrics={}, error_reference=fitted.result.error_reference)
    pacsv.write_csv(masked.take(pa.array(high)).drop_columns([ROW_ID]), folder / "drifted.csv")
    (folder / "schema.yaml").write_text(json.dumps(SCHEMA.model_dump(by_alias=True, mode="json")))
    return folder / "drifted.csv", folder / "schema.yaml", folder / "model", full.take(pa.array(high))


def test_a_job_with_adapt_writes_a_new_model_version_and_refines_through_it(drifted_files, tmp_path, spark):
    import json

    from deltalake import DeltaTable

    from lakefill.errors import ConfigError
    from lakefill.pipelines.local_job import run_local
    from lakefill.pipelines.spark_job import run_spark

    csv, schema, model, truth = drifted_files
    files = (csv, schema, model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    quiet = lambda *_: None  # noqa: E731
    plain = run_local(_drift_job(tmp_path / "plain", files), log=quiet)
    adapted = run_local(_drift_job(tmp_path / "adapt", files, adapt=True), log=quiet)
    version = model.parent / "model.adapted-r1"
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before  # the job's model is never touched
    loaded = load_artifact(version)
    assert loaded.adapted is not None and loaded.adaptation["used"]
    report = json.loads((tmp_path / "adapt" / "out" / "reports" / "r1" / "report.json").read_text())
    assert report["adaptation"]["used"] and report["adaptation"]["model"] == str(version)
    assert report["model"] == str(version)
    assert "adaptation" in (tmp_path / "adapt" / "out" / "reports" / "r1" / "report.html").read_text()

    def rows(run):
        return DeltaTable(run.table).to_pyarrow_table().sort_by(ROW_ID)

    a, p = rows(adapted), rows(plain)
    refined = np.asarray(a.column(METHOD).to_pylist()) == "reverse"
    assert refined.sum() > (np.asarray(p.column(METHOD).to_pylist()) == "reverse").sum()
    y = truth.column("y").to_numpy()
    hidden_y = np.asarray([("y" in (v or [])) for v in a.column(IMPUTED).to_pylist()])
    err = lambda t: np.abs(t.column("y").to_numpy() - y)[hidden_y].mean()  # noqa: E731
    assert err(a) < err(p)
    # adapt_rows: all: every row filled through the adapted networks
    every = rows(run_local(_drift_job(tmp_path / "all", files, adapt=True, adapt_rows="all", run_id="r3"), log=quiet))
    methods = set(every.column(METHOD).to_pylist())
    assert "adapted" in methods and "ae" not in methods
    assert err(every) < err(p)
    # a later run named at the new version, adapt off, fills every row through it as asked
    later = rows(run_local(_drift_job(tmp_path / "later", files, model=str(version), adapt_rows="all", run_id="r4"),
                           log=quiet))
    assert "adapted" in set(later.column(METHOD).to_pylist())
    # Spark loads the new version on its executors and writes the same rows
    s = rows(run_spark(_drift_job(tmp_path / "spark", files, model=str(version), run_id="r2"), spark=spark, log=quiet))
    assert s.column(METHOD).to_pylist() == a.column(METHOD).to_pylist()
    np.testing.assert_allclose(s.column("y").to_numpy(), a.column("y").to_numpy(), rtol=1e-6, atol=1e-6)
    # a version is never overwritten: a rerun of r1 (a retry) takes it again; one from another model is refused
    written = {p.name: p.read_bytes() for p in version.iterdir()}
    again = rows(run_local(_drift_job(tmp_path / "again", files, adapt=True), log=quiet))
    assert {p.name: p.read_bytes() for p in version.iterdir()} == written
    assert again.drop_columns(["_lf_run_id"]).equals(a.drop_columns(["_lf_run_id"]))
    shutil.copytree(model, model.parent / "model.adapted-r9")  # a folder of r9 that no adaptation of model wrote
    with pytest.raises(ConfigError, match="adapted from another model for this run id; adaptation never overwrites"):
        run_local(_drift_job(tmp_path / "r9", files, adapt=True, run_id="r9"), log=quiet)


def test_an_adapted_model_is_checked_like_the_rest_of_the_artifact(drifted, tmp_path):
    from lakefill.errors import ModelError

    _, masked, _, art = drifted
    adapted, report = Imputer(art).adapt(masked, ADAPT)
    d = save_artifact(tmp_path / "v", model=art.model, codec=art.codec, schema=art.schema, policy=None, config=art.config,
                      metrics={}, error_reference=art.error_reference, adapted=adapted, adaptation=report)
    back = load_artifact(d)
    assert torch.equal(_weights(back.adapted), _weights(adapted)) and back.adaptation == report
    assert torch.equal(_weights(back.model), _weights(art.model))
    data = bytearray((d / "adapted.safetensors").read_bytes())
    data[-5] ^= 1
    (d / "adapted.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="adapted weights were changed"):
        load_artifact(d)


@pytest.fixture(scope="module")
def profiled_files(tmp_path_factory):
    """The model of ``drifted_files`` with its training rows' profile (what ``lakefill train``
    writes), the drifted rows (x >= 0.3) and held-out rows of the training distribution (x < 0.3)."""
    import json

    import pyarrow.csv as pacsv

    from lakefill._drift import profile_table

    full, masked, hide = make_table(n=1600, seed=3, missing=0.2)
    x = full.column("x").to_numpy()
    low, high = np.nonzero(x < 0.3)[0], np.nonzero(x >= 0.3)[0]
    train, same = low[: len(low) * 3 // 4], low[len(low) * 3 // 4:]
    folder = tmp_path_factory.mktemp("profiled")
    rows = full.take(pa.array(train))
    fitted = fit_model(rows.append_column(ROW_ID, pa.array(train, pa.int64())), SCHEMA, config=SMALL)
    save_artifact(folder / "model", model=fitted.model, codec=fitted.codec, schema=SCHEMA, policy=None, config=SMALL,
                  metrics={}, error_reference=fitted.result.error_reference, profile=profile_table(rows, SCHEMA))
    pacsv.write_csv(masked.take(pa.array(high)).drop_columns([ROW_ID]), folder / "drifted.csv")
    pacsv.write_csv(masked.take(pa.array(same)).drop_columns([ROW_ID]), folder / "same.csv")
    (folder / "schema.yaml").write_text(json.dumps(SCHEMA.model_dump(by_alias=True, mode="json")))
    return folder


def test_a_drifted_run_adapts_itself_and_fills_every_row_through_the_adapted_networks(profiled_files, tmp_path):
    """on_drift (default adapt_all): the run's first records drifted from the training rows, so
    the networks are adapted (with adapt's held-out check) and every row is filled by them;
    route: only the side stage uses them; none: the run is as before. A run that did not drift
    is the same, byte for byte, whatever on_drift says."""
    import json

    from deltalake import DeltaTable

    from lakefill.pipelines.local_job import run_local

    folder = profiled_files
    quiet = lambda *_: None  # noqa: E731

    def job(name, data, **extra):
        return _drift_job(tmp_path / name, (folder / data, folder / "schema.yaml", folder / "model"),
                          run_id=name, **extra)

    def rows(run):
        return DeltaTable(run.table).to_pyarrow_table().sort_by(ROW_ID).drop_columns(["_lf_run_id"])

    lines = []
    default = run_local(job("d1", "drifted.csv"), log=lines.append)
    report = json.loads((tmp_path / "d1" / "out" / "reports" / "d1" / "report.json").read_text())
    check = report["drift_check"]
    assert "x" in check["drifted"] and check["on_drift"] == "adapt_all"
    assert check["action"] == "adapt_all: every row filled by the adapted networks"
    assert report["adaptation"]["used"] and report["adaptation"]["trigger"] == "on_drift: adapt_all"
    assert report["model"] == str(folder / "model.adapted-d1")
    assert any("moved from the model's training rows (on_drift: adapt_all)" in str(line) for line in lines)
    methods = set(rows(default).column(METHOD).to_pylist())
    assert "adapted" in methods and "ae" not in methods
    route = rows(run_local(job("d2", "drifted.csv", on_drift="route"), log=quiet))
    none = rows(run_local(job("d3", "drifted.csv", on_drift="none"), log=quiet))
    assert "adapted" not in set(route.column(METHOD).to_pylist())
    refined = lambda t: int(np.sum(np.asarray(t.column(METHOD).to_pylist()) == "reverse"))  # noqa: E731
    assert refined(route) > refined(none)
    report = json.loads((tmp_path / "d3" / "out" / "reports" / "d3" / "report.json").read_text())
    assert "drift_check" not in report and "adaptation" not in report
    assert not (folder / "model.adapted-d3").exists()
    # in distribution: nothing drifted, nothing adapted, the same rows as on_drift: none
    same = run_local(job("s1", "same.csv"), log=quiet)
    report = json.loads((tmp_path / "s1" / "out" / "reports" / "s1" / "report.json").read_text())
    assert report["drift_check"]["drifted"] == [] and report["drift_check"]["action"] == "none: no column drifted"
    assert "adaptation" not in report and not (folder / "model.adapted-s1").exists()
    assert rows(same).equals(rows(run_local(job("s2", "same.csv", on_drift="none"), log=quiet)))
