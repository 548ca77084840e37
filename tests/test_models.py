import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from lakefill.models.artifact import FORMAT, _manifest_digest, load_artifact, save_artifact
from lakefill.models import training
from lakefill.models.grid import grid_weight
from lakefill.models.config import AEConfig
from lakefill.models.gaussian import GaussianMember, fit_gaussian
from lakefill.models.mixture import Ensemble, direct_fill_inputs, predict
from lakefill.models.network import MaskedAutoencoder, cell_losses
from lakefill.models.training import _loss_weights, _PlateauSchedule
from lakefill.models.codec import TableCodec
from lakefill.models.donors import DonorIndex
from lakefill.models.reverse import ReverseConfig, reverse_impute
from lakefill.models.training import fit_model
from lakefill.errors import ModelError
from lakefill.transforms.impute import CONFIDENCE, IMPUTED, METHOD, Imputer
from lakefill.transforms.io import ROW_ID
from lakefill.schema import TableSchema

SMALL = AEConfig(hidden=32, depth=2, code=8, epochs=30, min_steps=400, patience=10, extra_sizes=(), random_state=0)
SCHEMA = TableSchema.model_validate({"name": "t", "columns": [
    {"name": "id", "type": "id"},
    {"name": "x", "type": "numeric", "impute": True},
    {"name": "y", "type": "numeric", "impute": True},
    {"name": "k", "type": "integer", "impute": True},
    {"name": "c", "type": "categorical", "impute": True, "categories": ["a", "b"]},
    {"name": "flag", "type": "boolean", "impute": True},
    {"name": "d", "type": "datetime", "impute": True},
]})


def make_table(n=400, seed=0, missing=0.15):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    y = 2 * x + rng.normal(0, 0.1, n)
    k = np.round(3 * x + 10).astype(np.int64)
    c = np.where(x > 0, "a", "b")
    flag = x > 0.5
    d = (1_600_000_000 + (x * 86400).astype(np.int64)) * 1_000_000
    cols = {"id": pa.array([f"r{i}" for i in range(n)]), "x": pa.array(x), "y": pa.array(y), "k": pa.array(k),
            "c": pa.array(c.tolist()), "flag": pa.array(flag),
            "d": pa.array(d, pa.int64()).cast(pa.timestamp("us", tz="UTC"))}
    full = pa.table(cols)
    hide = rng.random((n, 6)) < missing
    hide[:, 0] = False  # x is always there, so the others are predictable
    masked = {"id": cols["id"]}
    for j, name in enumerate(["x", "y", "k", "c", "flag", "d"]):
        col = cols[name]
        masked[name] = pc.if_else(pa.array(hide[:, j]), pa.scalar(None, col.type), col)
    t = pa.table(masked).append_column("_lf_row_id", pa.array(np.arange(n), pa.int64()))
    return full, t, hide


@pytest.fixture(scope="module")
def trained():
    full, masked, hide = make_table()
    return full, masked, hide, fit_model(masked, SCHEMA, config=SMALL)


def test_codec_round_trip_keeps_types_and_values():
    full, _, _ = make_table(n=50, missing=0)
    codec = TableCodec(schema=SCHEMA).fit(full)
    enc = codec.encode(full)
    assert enc.observed.all()
    probs = []
    for k, name in enumerate(codec.cat_columns_):
        p = np.zeros((50, len(codec.categories_[name])))
        p[np.arange(50), enc.targets_cat[:, k]] = 1
        probs.append(p)
    out = codec.decode_into(full, enc.targets_num, probs, np.ones_like(enc.observed))
    assert out.schema == full.schema  # an integer column stays integer, a datetime a datetime
    for name in ("k", "c", "flag", "d"):
        assert out.column(name).to_pylist() == full.column(name).to_pylist(), name
    np.testing.assert_allclose(out.column("x").to_numpy(), full.column("x").to_numpy(), rtol=1e-5, atol=1e-5)


def test_codec_unknown_category_is_not_an_error():
    full, _, _ = make_table(n=50, missing=0)
    codec = TableCodec(schema=SCHEMA).fit(full)
    other = full.set_column(full.column_names.index("c"), "c", pa.array(["zzz"] * 50))
    enc = codec.encode(other)
    assert enc.observed[:, codec.columns.index("c")].all() and (enc.targets_cat[:, 0] == -1).all()


def test_imputer_fills_every_null_and_keeps_observed_cells(trained, tmp_path):
    full, masked, hide, fitted = trained
    save_artifact(tmp_path / "m", model=fitted.model, codec=fitted.codec, schema=SCHEMA, policy=None, config=SMALL,
                  metrics=fitted.metrics, error_reference=fitted.result.error_reference)
    imp = Imputer(load_artifact(tmp_path / "m", schema=SCHEMA))
    out = imp.impute(masked)
    for name in ("x", "y", "k", "c", "flag", "d"):
        assert out.column(name).null_count == 0, name
        obs = pc.is_valid(masked.column(name))
        assert pc.all(pc.equal(pc.filter(out.column(name), obs), pc.filter(masked.column(name), obs))).as_py()
    assert out.schema.field("k").type == pa.int64()
    imputed = out.column(IMPUTED).to_pylist()
    names = ["x", "y", "k", "c", "flag", "d"]
    assert imputed == [[n for j, n in enumerate(names) if hide[i, j]] for i in range(len(hide))]
    conf = out.column(CONFIDENCE).to_numpy()
    assert ((conf > 0) & (conf <= 1)).all()
    assert set(out.column(METHOD).to_pylist()) == {"ae", "none"}
    assert (conf[~hide.any(1)] == 1).all()
    # the model learned y = 2x: its fills are far better than the column mean
    y_true, y_hat = full.column("y").to_numpy(), out.column("y").to_numpy()
    h = hide[:, 1]
    assert np.sqrt(np.mean((y_hat[h] - y_true[h]) ** 2)) < 0.5 * np.std(y_true)


def test_training_is_deterministic():
    _, masked, _ = make_table(n=200)
    a = fit_model(masked, SCHEMA, config=SMALL).model.state_dict()
    b = fit_model(masked, SCHEMA, config=SMALL).model.state_dict()
    c = fit_model(masked, SCHEMA, config=replace(SMALL, random_state=1)).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_tampered_weights_are_refused(trained, tmp_path):
    *_, fitted = trained
    d = save_artifact(tmp_path / "m", model=fitted.model, codec=fitted.codec, schema=SCHEMA, policy=None,
                      config=SMALL, metrics={}, error_reference=1.0)
    w = d / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 .* does not match"):
        load_artifact(d)


def test_wrong_schema_is_refused_naming_the_columns(trained, tmp_path):
    *_, fitted = trained
    d = save_artifact(tmp_path / "m", model=fitted.model, codec=fitted.codec, schema=SCHEMA, policy=None,
                      config=SMALL, metrics={}, error_reference=1.0)
    other = TableSchema.model_validate({"columns": [
        {"name": "x", "type": "integer", "impute": True}, {"name": "zz", "type": "numeric", "impute": True}]})
    with pytest.raises(ModelError, match=r"'x' \(model: numeric, the job's schema: integer\).*'y' \(in the model.*'zz'"):
        load_artifact(d, schema=other)


def test_manifest_is_json_and_not_a_pickle(trained, tmp_path):
    *_, fitted = trained
    d = save_artifact(tmp_path / "m", model=fitted.model, codec=fitted.codec, schema=SCHEMA, policy=None,
                      config=SMALL, metrics={"a": 1}, error_reference=1.0)
    m = json.loads((d / "manifest.json").read_text())
    assert m["format"] == FORMAT and len(m["weights_sha256"]) == 64 and "torch" in m["versions"]
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json", "weights.safetensors"]


@pytest.fixture(scope="module")
def trained_network():
    """The network alone (no Gaussian member): on this linear table the Gaussian makes the
    direct fill near-exact (squared error 0.006 against 0.055), which leaves reverse training
    nothing to show on the truth; its rule is checked with the Gaussian in the mixture test."""
    full, masked, hide = make_table()
    return full, masked, hide, fit_model(masked, SCHEMA, config=replace(SMALL, without=("gaussian",)))


def test_reverse_training_does_not_worsen_rows_and_runs_under_no_grad(trained_network):
    full, masked, hide, fitted = trained_network
    codec, model = fitted.codec, fitted.model
    enc = codec.encode(masked)
    pred = predict(model, enc.values, enc.observed)
    init = enc.values.copy()
    n_num = len(codec.num_columns_)
    for j, sl in enumerate(codec.input_slices()):
        if j < n_num:
            init[:, sl.start] = np.where(~enc.observed[:, j], pred.num[:, j], init[:, sl.start])
        else:
            p = np.concatenate([pred.cat_probs[j - n_num], np.zeros((len(init), 1))], 1)
            init[:, sl] = np.where(~enc.observed[:, j:j + 1], p, init[:, sl])
    rows = np.nonzero((~enc.observed).sum(1) >= 2)[0]
    with torch.no_grad():  # as RunInference would call it
        res = reverse_impute(model, enc.values[rows], enc.observed[rows], enc.targets_num[rows], enc.targets_cat[rows],
                             init[rows], config=ReverseConfig(steps=20))
    # the per-row rule: a kept refinement never has a worse held-back error
    assert (res.holdout_error_after <= res.holdout_error_before + 1e-9).all()
    assert res.improved.any()
    # and on the truth, over the refined rows' numeric cells, it is no worse on average
    truth = codec.encode(full).targets_num[rows]
    miss = ~enc.observed[rows][:, :n_num]
    direct = pred.num[rows]
    final = np.where(res.improved[:, None], res.num, direct)
    err_direct = ((direct - truth) ** 2)[miss].mean()
    err_final = ((final - truth) ** 2)[miss].mean()
    assert err_final <= err_direct * 1.05
    again = reverse_impute(model, enc.values[rows], enc.observed[rows], enc.targets_num[rows], enc.targets_cat[rows],
                           init[rows], config=ReverseConfig(steps=20))
    np.testing.assert_array_equal(again.num, res.num)  # deterministic


def test_imputer_refine_marks_reverse_rows(trained, tmp_path):
    _, masked, _, fitted = trained
    d = save_artifact(tmp_path / "m", model=fitted.model, codec=fitted.codec, schema=SCHEMA, policy=None,
                      config=SMALL, metrics={}, error_reference=fitted.result.error_reference)
    imp = Imputer(load_artifact(d), reverse=ReverseConfig(steps=20))
    out = imp.impute(masked)
    low = out.filter(pc.greater(pc.list_value_length(out.column(IMPUTED)), 1))
    refined = imp.refine(low)
    methods = set(refined.column(METHOD).to_pylist())
    assert methods <= {"ae", "reverse"} and "reverse" in methods
    for name in ("x", "y", "k", "c"):
        assert refined.column(name).null_count == 0


def test_refine_gives_a_row_the_same_result_whatever_its_batch(trained, tmp_path):
    """Beam, Spark and the local job batch rows differently: a row's refinement must not depend on it."""
    _, masked, _, fitted = trained
    d = save_artifact(tmp_path / "m", model=fitted.model, codec=fitted.codec, schema=SCHEMA, policy=None,
                      config=SMALL, metrics={}, error_reference=fitted.result.error_reference)
    imp = Imputer(load_artifact(d), reverse=ReverseConfig(steps=20, check_every=10))
    ids = pa.array(np.arange(masked.num_rows) * 7 + 1000, pa.int64())
    masked = masked.drop_columns([c for c in masked.column_names if c == ROW_ID]).append_column(ROW_ID, ids)
    out = imp.impute(masked)
    low = out.filter(pc.greater(pc.list_value_length(out.column(IMPUTED)), 0))
    whole = imp.refine(low)
    parts = pa.concat_tables([imp.refine(low.slice(0, 5)), imp.refine(low.slice(5, 40)), imp.refine(low.slice(45))])
    shuffled = imp.refine(low.take(np.arange(low.num_rows)[::-1])).sort_by(ROW_ID)
    assert "reverse" in whole.column(METHOD).to_pylist()
    for other in (parts, shuffled):
        assert other.column(METHOD).to_pylist() == whole.column(METHOD).to_pylist()
        for name in ("x", "y"):
            np.testing.assert_allclose(other.column(name).to_numpy(), whole.column(name).to_numpy(), rtol=1e-6, atol=1e-6)
        assert other.column("c").to_pylist() == whole.column("c").to_pylist()


def test_config_refuses_an_unknown_loss_scale_and_a_bad_patience_after():
    with pytest.raises(ValueError, match="loss_scale"):
        AEConfig(loss_scale="minmax")
    with pytest.raises(ValueError, match="patience_after"):
        AEConfig(patience_after=1.0)


def test_range_loss_counts_each_numeric_column_on_its_min_max_scale():
    rng = np.random.default_rng(0)
    n = 500
    spiky = np.where(rng.random(n) < 0.02, rng.exponential(1000.0, n), rng.normal(0, 1, n))  # heavy tail
    t = pa.table({"x": rng.normal(0, 1, n), "spiky": spiky})
    schema = TableSchema.model_validate({"name": "t", "columns": [
        {"name": "x", "type": "numeric", "impute": True}, {"name": "spiky", "type": "numeric", "impute": True}]})
    codec = TableCodec(schema=schema).fit(t)
    w = _loss_weights(AEConfig(), codec.error_weights(), 2)
    assert w is not None and float(w.mean()) == pytest.approx(1.0)
    # the same error in robust units weighs (range_x / range_spiky)^2 * (scale_spiky / scale_x)^2 less
    expected = codec.error_weights()[1] / codec.error_weights()[0]
    assert float(w[1] / w[0]) == pytest.approx(expected, rel=1e-5)
    assert float(w[1]) < 0.01 * float(w[0])
    assert _loss_weights(AEConfig(loss_scale="robust"), codec.error_weights(), 2) is None
    # the weights reach the per-cell loss the training minimises
    model = MaskedAutoencoder(n_inputs=2, col_slices=[(0, 1), (1, 2)], n_num=2, cat_sizes=[], hidden=4, depth=1, code=2)
    mu, target = torch.zeros(1, 2), torch.ones(1, 2)
    loss, _ = cell_losses(model, mu, torch.zeros(1, 2), torch.zeros(1, 0), target, torch.zeros(1, 0, dtype=torch.long),
                          torch.ones(1, 2), w)
    assert torch.allclose(loss[0], w)


def test_early_stopping_waits_until_the_rate_anneals():
    _, masked, _ = make_table(n=200)
    cfg = dict(hidden=16, depth=1, code=4, epochs=40, min_steps=0, patience=1, lr=0.05, extra_sizes=(), random_state=0,
               schedule="onecycle")
    eager = fit_model(masked, SCHEMA, config=AEConfig(patience_after=0.0, **cfg)).result
    patient = fit_model(masked, SCHEMA, config=AEConfig(patience_after=0.5, **cfg)).result
    assert eager.epochs_run < 20  # the setting can stop early ...
    assert patient.epochs_run > 20  # ... but not before half of the schedule
    assert patient.val_loss == pytest.approx(min(patient.history))  # the best epoch is what is kept


def test_the_model_mixes_its_sizes_with_weights_fitted_on_held_out_cells(tmp_path):
    _, masked, hide = make_table(n=300)
    base = dict(epochs=15, min_steps=0, patience=5, random_state=0, without=("gaussian",))  # networks only here
    cfg = AEConfig(hidden=32, depth=2, code=8, extra_sizes=((8, 1, 2), [32, 2, 8]), **base)  # a repeat trains once
    fitted = fit_model(masked, SCHEMA, config=cfg)
    nets = fitted.metrics["networks"]
    assert [(n["hidden"], n["depth"], n["code"]) for n in nets] == cfg.sizes == [(32, 2, 8), (8, 1, 2)]
    assert sum(n["weight"] for n in nets) == pytest.approx(1.0)
    assert all(round(n["weight"] * 20, 6).is_integer() for n in nets)
    # the grid holds each network alone: the mixture's held-out loss is at most the best one's
    assert fitted.result.val_loss <= min(n["val_loss"] for n in nets) + 1e-6
    assert fitted.model.sizes == [(n["hidden"], n["depth"], n["code"]) for n in nets if n["weight"] > 0]
    # each network trains exactly as it would alone
    singles = [fit_model(masked, SCHEMA, config=AEConfig(hidden=h, depth=d, code=c, extra_sizes=(), **base))
               for h, d, c in cfg.sizes]
    alone = [f.model.members[0] for f in singles]
    for net, member in zip(alone, fitted.model.members):
        if net.size == member.size:
            for k, v in net.state_dict().items():
                assert torch.equal(v, member.state_dict()[k])
    assert [n["val_loss"] for n in nets] == [f.result.val_loss for f in singles]
    # the mixture: weighted mean and probabilities; the variance adds the means' spread
    ens = Ensemble(alone, [0.25, 0.75])
    enc = fitted.codec.encode(masked)
    ep = predict(ens, enc.values, enc.observed)
    a, b = (predict(m, enc.values, enc.observed) for m in alone)
    np.testing.assert_allclose(ep.num, 0.25 * a.num + 0.75 * b.num, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ep.cat_probs[0], 0.25 * a.cat_probs[0] + 0.75 * b.cat_probs[0], rtol=1e-5, atol=1e-6)
    var = 0.25 * (a.num_var + (a.num - ep.num) ** 2) + 0.75 * (b.num_var + (b.num - ep.num) ** 2)
    np.testing.assert_allclose(ep.num_var, var, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="weights"):
        Ensemble(alone, [0.5, 0.6])
    # reverse training runs on a mixture (each network draws its own dropout) and keeps its rule
    rows = np.flatnonzero(hide.any(1))[:40]
    init = direct_fill_inputs(ens, enc.values, enc.observed, ep)
    res = reverse_impute(ens, enc.values[rows], enc.observed[rows], enc.targets_num[rows], enc.targets_cat[rows],
                         init[rows], config=ReverseConfig(steps=20))
    assert np.all(res.holdout_error_after <= res.holdout_error_before + 1e-9)
    # saved and loaded with its networks and weights; a config without its sizes is refused at save
    d = save_artifact(tmp_path / "m", model=ens, codec=fitted.codec, schema=SCHEMA, policy=None, config=cfg,
                      metrics=fitted.metrics, error_reference=fitted.result.error_reference)
    art = load_artifact(d, schema=SCHEMA)
    assert art.model.sizes == cfg.sizes and art.model.weights.tolist() == [0.25, 0.75]
    np.testing.assert_array_equal(predict(art.model, enc.values, enc.observed).num, ep.num)
    with pytest.raises(ModelError, match="sizes"):
        save_artifact(tmp_path / "bad", model=ens, codec=fitted.codec, schema=SCHEMA, policy=None,
                      config=AEConfig(hidden=32, depth=2, code=8, extra_sizes=()), metrics={}, error_reference=1.0)


def test_the_gaussian_member_is_the_conditional_normal_fitted_by_em():
    rng = np.random.default_rng(3)
    mu = np.array([1.0, -2.0, 0.5, 3.0])
    a = rng.normal(size=(4, 4))
    sigma = a @ a.T + 0.5 * np.eye(4)
    x = rng.multivariate_normal(mu, sigma, size=4000)
    observed = rng.random(x.shape) >= 0.25
    observed[:, 0] |= ~observed.any(1)
    member = GaussianMember(n_inputs=4, col_slices=[(j, j + 1) for j in range(4)], n_num=4, cat_sizes=[])
    iterations = fit_gaussian(member, np.where(observed, x, 0.0), observed)
    assert 1 < iterations < 50
    # EM on the observed cells recovers the distribution the rows were drawn from
    np.testing.assert_allclose(member.mean.numpy(), mu, atol=0.1)
    np.testing.assert_allclose(member.cov.numpy(), sigma, atol=0.25 * np.abs(sigma).max())
    # each row's prediction is its conditional mean and variance under the fitted normal
    m, s = member.mean.numpy(), member.cov.numpy()
    given = observed[:50]
    out_mu, out_logvar, logits, code = member(torch.from_numpy(np.where(given, x[:50], 0.0)).float(),
                                              torch.from_numpy(given).float())
    assert logits.shape == (50, 0) and code.shape == (50, 0)
    for i in range(50):
        o, h = given[i], ~given[i]
        k = s[np.ix_(h, o)] @ np.linalg.inv(s[np.ix_(o, o)])
        want = m[h] + k @ (x[i, o] - m[o])
        np.testing.assert_allclose(out_mu[i, h].numpy(), want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out_mu[i, o].numpy(), x[i, o], rtol=1e-5, atol=1e-5)  # given cells come back
        var = np.diag(s[np.ix_(h, h)] - k @ s[np.ix_(o, h)])
        np.testing.assert_allclose(np.exp(out_logvar[i, h].numpy()), var, rtol=1e-3)


def test_the_mixture_offers_a_gaussian_member_and_weighs_it_on_held_out_cells(trained, tmp_path):
    _, masked, hide, fitted = trained  # SMALL: one network + the Gaussian candidate
    g = fitted.metrics["gaussian"]
    assert g["em_iterations"] >= 1 and round(g["weight"] * 20, 6).is_integer()
    # y and k are linear in x: the Gaussian earns a share, and the mixture beats each member alone
    assert 0 < g["weight"] < 1 and fitted.model.has_gaussian
    assert fitted.result.val_loss <= min(g["val_loss"], fitted.metrics["networks"][0]["val_loss"]) + 1e-6
    assert fitted.model.sizes == [SMALL.size]
    # saved and loaded with its Gaussian member: the same predictions
    enc = fitted.codec.encode(masked)
    d = save_artifact(tmp_path / "m", model=fitted.model, codec=fitted.codec, schema=SCHEMA, policy=None, config=SMALL,
                      metrics=fitted.metrics, error_reference=fitted.result.error_reference)
    assert json.loads((d / "manifest.json").read_text())["architecture"]["gaussian"] is True
    art = load_artifact(d, schema=SCHEMA)
    assert art.model.has_gaussian
    np.testing.assert_array_equal(predict(art.model, enc.values, enc.observed).num,
                                  predict(fitted.model, enc.values, enc.observed).num)
    # reverse training works through it and keeps its rule
    rows = np.flatnonzero(hide.any(1))[:40]
    pred = predict(fitted.model, enc.values, enc.observed)
    init = direct_fill_inputs(fitted.model, enc.values, enc.observed, pred)
    res = reverse_impute(fitted.model, enc.values[rows], enc.observed[rows], enc.targets_num[rows],
                         enc.targets_cat[rows], init[rows], config=ReverseConfig(steps=20))
    assert np.all(res.holdout_error_after <= res.holdout_error_before + 1e-9)
    # switched off: no candidate, no member
    off = fit_model(masked, SCHEMA, config=replace(SMALL, without=("gaussian",)))
    assert off.metrics["gaussian"] is None and not off.model.has_gaussian
    with pytest.raises(ValueError, match="at least one network"):
        Ensemble([GaussianMember(n_inputs=3, col_slices=[(0, 1), (1, 3)], n_num=1, cat_sizes=[1])])


def test_an_ensemble_of_one_is_its_network():
    net = MaskedAutoencoder(n_inputs=3, col_slices=[(0, 1), (1, 3)], n_num=1, cat_sizes=[2], hidden=8, depth=1, code=2)
    x, m = torch.randn(5, 3), torch.ones(5, 2)
    for a, b in zip(Ensemble([net])(x, m), net(x, m)):
        assert torch.equal(a, b)


def test_config_refuses_bad_extra_sizes():
    for bad in ((128, 2), ((128, 0, 16),), (("wide", 2, 16),)):
        with pytest.raises(ValueError, match="extra_sizes"):
            AEConfig(extra_sizes=bad)
    assert AEConfig(extra_sizes=[[64, 2, 8]]).extra_sizes == ((64, 2, 8),)  # as a manifest's JSON gives it back


def test_row_draws_are_the_int64_hash_whatever_the_arithmetic_width():
    """RowRandom computes its (rows, width) draws in int32; they must be the plain 31-bit hash."""
    from lakefill.models.reverse import RowRandom

    m31 = (1 << 31) - 1

    def mix(v: int) -> int:  # the hash, in Python integers (no width at all)
        v = ((v ^ (v >> 15)) * 0x2C1B3C6D) & m31
        v = ((v ^ (v >> 12)) * 0x297A2D39) & m31
        return v ^ (v >> 15)

    keys = [0, 1, 12345, 2**31 - 1, 2**40 + 17, 98765432101]
    seed, salt, width = 7, 13, 9
    gen = RowRandom(np.array(keys), seed)
    got = gen.uniform(salt, width).numpy()
    s = mix((salt * 0x27d4eb2d + 0x165667b1) & m31)
    hi = mix((seed // (1 << 31)) & m31)
    for i, k in enumerate(keys):
        row = mix(mix((k & m31) ^ (seed & m31)) ^ (hi + 0x5bd1e995 & m31))
        base = mix(row ^ s)
        want = [np.float32(mix((base + j * 0x9e3779b1) & m31) / 2**31) for j in range(width)]
        assert got[i].tolist() == want, f"row key {k}"
    assert 0.0 <= got.min() and got.max() < 1.0


# ------------------------------------------------------------------------------------ donors
DUP_SCHEMA = TableSchema.model_validate({"name": "d", "columns": [
    *[{"name": f"x{j}", "type": "numeric", "impute": True} for j in range(6)],
    {"name": "c", "type": "categorical", "impute": True, "categories": ["p", "q"]},
]})


def make_duplicated_table(n=300, copies=100, seed=0, missing=0.2):
    """n distinct rows (continuous values: no two agree by chance) plus copies of the first
    ``copies`` rows; every row, copy or not, gets its own missing cells."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    X = np.column_stack([z[:, 0], z[:, 1], z[:, 0] * z[:, 1], np.sin(3 * z[:, 0]), z[:, 1] ** 2, rng.normal(size=n)])
    X = np.round(X, 4)
    c = np.where(z[:, 0] + rng.normal(0, 1, n) > 0, "p", "q")
    X, c = np.concatenate([X, X[:copies]]), np.concatenate([c, c[:copies]])
    twin = np.concatenate([np.arange(n, n + copies), np.full(n - copies, -1), np.arange(copies)])
    hide = rng.random((len(X), 7)) < missing
    cols = {f"x{j}": pa.array(np.where(hide[:, j], np.nan, X[:, j])) for j in range(6)}
    cols = {k: pc.if_else(pc.is_nan(v), pa.scalar(None, pa.float64()), v) for k, v in cols.items()}
    cols["c"] = pc.if_else(pa.array(hide[:, 6]), pa.scalar(None, pa.string()), pa.array(c.tolist()))
    return pa.table(cols), X, c, hide, twin


def test_the_donor_index_finds_a_rows_copies_and_nothing_else():
    table, X, c, hide, twin = make_duplicated_table()
    codec = TableCodec(schema=DUP_SCHEMA).fit(table)
    enc = codec.encode(table)
    slices = [(s.start, s.stop) for s in codec.input_slices()]
    index = DonorIndex.build(enc.values, enc.observed, col_slices=slices, n_num=6, cat_sizes=codec.cat_sizes)
    fill = index.lookup(enc.values, enc.observed)  # the training rows themselves: each is its own match, never its donor
    truth = (X - np.array([codec.center_[f"x{j}"] for j in range(6)])) / np.array([codec.scale_[f"x{j}"] for j in range(6)])
    # precision: a filled cell is its copy's value; rows without a copy get nothing
    assert fill.num_has.any() and not fill.num_has[twin < 0].any() and np.all(fill.band[twin < 0] == -1)
    np.testing.assert_allclose(fill.num[fill.num_has], truth[fill.num_has].astype(np.float32), rtol=0, atol=1e-6)
    cats = np.asarray(codec.categories_["c"])
    got = fill.cat_has[:, 0]
    assert got.any() and np.all(cats[fill.cat_probs[0][got].argmax(1)] == c[got])
    # recall: a hole whose copy has the cell, in a pair that shares 4+ given numbers, is filled
    rows = np.flatnonzero(twin >= 0)
    shared = ((~hide[rows, :6]) & (~hide[twin[rows], :6])).sum(1)
    fillable = hide[rows, :6] & ~hide[twin[rows], :6] & (shared >= 4)[:, None]
    assert fillable.sum() >= 20 and fill.num_has[rows][fillable].mean() >= 0.9
    # a row's result does not depend on its batch; a row may be barred from a donor (itself, in validation)
    part = np.arange(0, len(X), 3)
    sub = index.lookup(enc.values[part], enc.observed[part])
    np.testing.assert_array_equal(sub.num, fill.num[part])
    np.testing.assert_array_equal(sub.band, fill.band[part])
    r = int(rows[np.argmax(fill.num_has[rows].sum(1))])
    barred = index.lookup(enc.values[[r]], enc.observed[[r]], exclude=np.array([twin[r]]))
    assert fill.num_has[r].any() and not barred.num_has.any()
    # a large batch is looked up in parts of donors._ROWS rows: the same result, exclusions kept
    from lakefill.models import donors

    keep, donors._ROWS = donors._ROWS, 7
    try:
        exclude = np.where((twin >= 0) & (np.arange(len(X)) % 2 == 0), twin, -1)  # half the rows barred from their copy
        parts = index.lookup(enc.values, enc.observed, exclude=exclude)
    finally:
        donors._ROWS = keep
    whole = index.lookup(enc.values, enc.observed, exclude=exclude)
    assert len(X) > 7 and whole.num_has.any()
    for f in ("num", "num_has", "cat_has", "band"):
        np.testing.assert_array_equal(getattr(parts, f), getattr(whole, f))
    np.testing.assert_array_equal(parts.cat_probs[0], whole.cat_probs[0])


def test_the_model_takes_a_copys_cells_where_the_held_out_cells_say_so(tmp_path):
    table, X, c, hide, twin = make_duplicated_table()
    fitted = fit_model(table, DUP_SCHEMA, config=SMALL)
    d = fitted.metrics["donors"]
    assert d["used"] and fitted.model.donors is not None and d["rows"] == table.num_rows
    assert any(b["weight"] > 0 and b["val_cells"] > 0 for b in d["bands"])
    for b in d["bands"]:
        assert round(b["weight"] * 20, 6).is_integer() and b["val_loss_with"] <= b["val_loss_without"]
    enc = fitted.codec.encode(table)
    with_donors = predict(fitted.model, enc.values, enc.observed, num_weights=fitted.codec.error_weights())
    index, fitted.model.donors = fitted.model.donors, None
    without = predict(fitted.model, enc.values, enc.observed, num_weights=fitted.codec.error_weights())
    fitted.model.donors = index
    truth = (X - np.array([fitted.codec.center_[f"x{j}"] for j in range(6)])) / np.array(
        [fitted.codec.scale_[f"x{j}"] for j in range(6)])
    holes = hide[:, :6] & index.lookup(enc.values, enc.observed).num_has
    err_with = ((with_donors.num - truth) ** 2)[holes].mean()
    err_without = ((without.num - truth) ** 2)[holes].mean()
    assert err_with < 0.1 * err_without
    # rows without a copy keep the networks' fill and confidence exactly
    alone = twin < 0
    np.testing.assert_array_equal(with_donors.num[alone], without.num[alone])
    np.testing.assert_array_equal(with_donors.cell_error[alone], without.cell_error[alone])
    assert with_donors.cell_error[:, :6][holes].mean() < without.cell_error[:, :6][holes].mean()  # a copy's cell is trusted more
    # saved with the model (under the weights' hash) and loaded back: the same fills
    out = save_artifact(tmp_path / "m", model=fitted.model, codec=fitted.codec, schema=DUP_SCHEMA, policy=None,
                        config=SMALL, metrics=fitted.metrics, error_reference=fitted.result.error_reference)
    assert json.loads((out / "manifest.json").read_text())["architecture"]["donors"] == table.num_rows
    art = load_artifact(out, schema=DUP_SCHEMA)
    np.testing.assert_array_equal(predict(art.model, enc.values, enc.observed).num,
                                  predict(fitted.model, enc.values, enc.observed).num)
    # provenance: a row filled with its copy's help says so
    methods = np.asarray(Imputer(art).impute(table).column(METHOD).to_pylist())
    assert set(methods[twin < 0]) <= {"ae", "none"} and "donor" in set(methods[twin >= 0])
    # reverse training keeps a copy's cells (blended in after its clean pass)
    rows = np.flatnonzero(holes.any(1))[:30]
    init = direct_fill_inputs(fitted.model, enc.values, enc.observed, with_donors)
    res = reverse_impute(fitted.model, enc.values[rows], enc.observed[rows], enc.targets_num[rows],
                         enc.targets_cat[rows], init[rows], config=ReverseConfig(steps=10))
    assert ((res.num - truth[rows]) ** 2)[holes[rows]].mean() < 0.1 * err_without
    # switched off: no index; a table without copies never keeps one
    off = fit_model(table, DUP_SCHEMA, config=replace(SMALL, without=("donors",)))
    assert off.metrics["donors"] is None and off.model.donors is None


def test_a_table_without_copies_keeps_no_donors(trained):
    fitted = trained[3]
    assert fitted.metrics["donors"]["used"] is False and fitted.model.donors is None
    assert all(b["val_cells"] == 0 and b["weight"] == 0 for b in fitted.metrics["donors"]["bands"])


def test_the_input_squash_compresses_only_a_numeric_inputs_tail():
    kw = dict(n_inputs=4, col_slices=[(0, 1), (1, 4)], n_num=1, cat_sizes=[2], hidden=8, depth=1, code=2)
    torch.manual_seed(0)
    plain = MaskedAutoencoder(**kw)
    squashed = MaskedAutoencoder(**kw, squash=3.0)
    squashed.load_state_dict(plain.state_dict())
    values = torch.tensor([[-2.5, 1.0, 0.0, 0.0], [50.0, 0.0, 1.0, 0.0], [-50.0, 0.0, 0.0, 1.0]])
    mask = torch.ones(3, 2)
    seen = squashed.squash_inputs(values)
    assert torch.equal(seen[0], values[0])  # within +-3: as it is
    assert float(seen[1, 0]) == pytest.approx(3 + np.log(48)) and float(seen[2, 0]) == pytest.approx(-3 - np.log(48))
    assert torch.equal(seen[:, 1:], values[:, 1:])  # a category's one-hot block is never touched
    assert torch.equal(plain.squash_inputs(values), values)  # 0: off
    mu_plain, mu_sq = plain(values, mask)[0], squashed(values, mask)[0]
    assert torch.allclose(mu_plain[0], mu_sq[0], atol=1e-6) and not torch.allclose(mu_plain[1], mu_sq[1], atol=1e-3)
    knee = squashed.squash_inputs(torch.tensor([[3 - 1e-4, 0.0, 0.0, 0.0], [3 + 1e-4, 0.0, 0.0, 0.0]]))
    assert abs(float(knee[1, 0] - knee[0, 0])) < 1e-3  # continuous where the compression starts
    v = values.clone().requires_grad_(True)  # reverse training optimises the inputs through it
    squashed(v, mask)[0].sum().backward()
    assert torch.isfinite(v.grad).all() and float(v.grad[1, 0].abs()) > 0
    with pytest.raises(ValueError, match="squash"):
        AEConfig(squash=-1)


def test_the_artifact_keeps_the_input_squash_and_reads_older_models_without_it(trained, tmp_path):
    full, masked, _, plain = trained
    assert AEConfig().squash == 0 and all(m.squash == 0 for m in plain.model.members if isinstance(m, MaskedAutoencoder))
    cfg = replace(SMALL, squash=3.0)
    fitted = fit_model(masked, SCHEMA, config=cfg)
    assert all(m.squash == 3.0 for m in fitted.model.members if isinstance(m, MaskedAutoencoder))
    d = save_artifact(tmp_path / "m", model=fitted.model, codec=fitted.codec, schema=SCHEMA, policy=None,
                      config=cfg, metrics={}, error_reference=1.0)
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["architecture"]["squash"] == 3.0
    with pytest.raises(ModelError, match="squash"):  # a config that does not match the networks is refused at save
        save_artifact(tmp_path / "bad", model=fitted.model, codec=fitted.codec, schema=SCHEMA, policy=None,
                      config=SMALL, metrics={}, error_reference=1.0)
    assert not (tmp_path / "bad").exists()
    loaded = load_artifact(d).model
    assert [m.squash for m in loaded.members if isinstance(m, MaskedAutoencoder)] == [3.0]
    enc = fitted.codec.encode(masked)
    enc.values[:5, 0] = 40.0  # outliers, where the squash matters
    a, b = predict(fitted.model, enc.values, enc.observed), predict(loaded, enc.values, enc.observed)
    assert np.allclose(a.num, b.num, atol=1e-6)
    # a model from a development build before 0.1.0 (/4, before the squash): refused, with the way out
    manifest["format"] = "lakefill-model/4"
    del manifest["architecture"]["squash"], manifest["config"]["squash"], manifest["artifact_sha256"]
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"'lakefill-model/4' is not one this version reads.*retrain"):
        load_artifact(d)


TWIN_SCHEMA = TableSchema.model_validate({"name": "w", "columns": [
    *[{"name": f"w{j}", "type": "numeric", "impute": True} for j in range(4)],
    {"name": "c", "type": "categorical", "impute": True, "categories": ["p", "q"]},
]})


def make_twin_table(n=1000, seed=0, missing=0.2):
    """Word-count twins, as in spam: w1 is w0 wherever w2 is set and 0 elsewhere (a sharp rule
    a smooth network blurs, a tree's split states exactly)."""
    rng = np.random.default_rng(seed)
    w0 = np.round(rng.exponential(1.0, n), 2)
    w2 = np.where(rng.random(n) < 0.5, 0.0, np.round(rng.exponential(1.0, n), 2))
    X = np.column_stack([w0, np.where(w2 > 0, w0, 0.0), w2, np.round(w0 + w2 + rng.normal(0, 0.1, n), 2)])
    c = np.where(w2 > 0, "p", "q")
    hide = rng.random((n, 5)) < missing
    hide[:, [0, 2]] = False  # what the rule reads is there
    cols = {f"w{j}": pc.if_else(pa.array(hide[:, j]), pa.scalar(None, pa.float64()), pa.array(X[:, j])) for j in range(4)}
    cols["c"] = pc.if_else(pa.array(hide[:, 4]), pa.scalar(None, pa.string()), pa.array(c.tolist()))
    return pa.table(cols), X, hide


def test_the_tree_walk_is_scikit_learns_prediction_and_repeats():
    from sklearn.ensemble import HistGradientBoostingRegressor

    from lakefill.models import trees as tree_module

    table, X, hide = make_twin_table()
    codec = TableCodec(schema=TWIN_SCHEMA).fit(table)
    enc = codec.encode(table)
    slices = [(s.start, s.stop) for s in codec.input_slices()]
    rows = np.arange(400)
    fill = tree_module.fit_trees(enc.values, enc.observed, enc.targets_num, col_slices=slices, n_num=4, rows=rows, seed=0)
    again = tree_module.fit_trees(enc.values, enc.observed, enc.targets_num, col_slices=slices, n_num=4, rows=rows, seed=0)
    assert fill.columns.tolist() == [0, 1, 2, 3] and len(fill.root) == 4 * tree_module.ROUNDS
    for k, v in fill.state_dict().items():  # same rows, same seed: the same trees
        assert torch.equal(v, again.state_dict()[k])
    # column w1's trees, walked here, give what scikit-learn's regressor (fitted alike) predicts
    from lakefill.models.donors import column_values
    V = column_values(enc.values, slices, 4).astype(np.float64)
    V[~enc.observed] = np.nan
    has = enc.observed[rows, 1]
    inputs = [0, 2, 3, 4]  # every other column varies
    reg = HistGradientBoostingRegressor(max_iter=tree_module.ROUNDS, learning_rate=0.1, early_stopping=False,
                                        random_state=0).fit(V[rows][has][:, inputs], enc.targets_num[rows, 1][has])
    given = enc.observed.copy()
    given[:, 1] = False  # every row's w1 is a hole to predict
    expected = reg.predict(V[:, inputs])
    compiled = fill.lookup(enc.values, given)
    assert compiled.has[:, 1].all() and not compiled.has[given[:, :4]].any()  # holes only
    np.testing.assert_allclose(compiled.num[:, 1], expected, rtol=0, atol=1e-9)
    fill.compiled, fill._arrays = False, None  # the numpy walk (no scikit-learn internals) agrees
    np.testing.assert_allclose(fill.lookup(enc.values, given).num, compiled.num, rtol=0, atol=1e-9)
    # node arrays that make no trees are refused before a walk reads them: a child in the next
    # tree, a child pointing back up (a cycle), roots that do not start at node 0
    left, root = fill.left.clone(), fill.root.clone()
    assert int(left[0]) != 0  # the first tree's root splits
    for broken, message in ((int(root[1]), "outside its tree"), (0, "not below its node")):
        fill.left[0] = broken
        with pytest.raises(ValueError, match=message):
            fill.check()
        fill.left.copy_(left)
    fill.root[0] = 1
    with pytest.raises(ValueError, match="roots"):
        fill.check()
    fill.root.copy_(root)
    fill.check()
    # a weight: the grid step with the lowest held-out loss, 0 when the trees only add error
    truth = enc.targets_num[:, :4].astype(np.float64)
    holes = ~given[:, :4] & enc.observed[:, :4]  # holes whose truth is known
    w, report = tree_module.fit_weight(fill, truth + 1.0, compiled, truth, holes, np.ones(4))
    assert w > 0.5 and report["val_loss_with"] < report["val_loss_without"]
    w, _ = tree_module.fit_weight(fill, truth, compiled, truth, holes, np.ones(4))
    assert w == 0
    # trees that save less than MIN_GAIN of the held-out loss are not worth their time: with the
    # fill off by a and the trees by +-1, the loss at weight w is (1 - w)^2 a^2 + w^2 per cell
    sign = np.where(np.arange(100) % 2 == 0, 1.0, -1.0)[:, None] * np.ones((1, 4))
    trees_off = tree_module.TreeBlend(sign, np.ones((100, 4), dtype=bool))
    zero, every = np.zeros((100, 4)), np.ones((100, 4), dtype=bool)
    w, report = tree_module.fit_weight(fill, zero + 0.2, trees_off, zero, every, np.ones(4))  # 3.5% saved at 0.05
    assert w == report["best_weight"] == 0.05
    w, report = tree_module.fit_weight(fill, zero + 0.028 ** 0.5, trees_off, zero, every, np.ones(4))  # 0.8% saved
    assert report["best_weight"] == 0.05 and w == 0 and tree_module.MIN_GAIN == 0.01


def test_the_model_blends_boosted_trees_where_the_held_out_cells_say_so(tmp_path, monkeypatch):
    table, X, hide = make_twin_table()
    fitted = fit_model(table, TWIN_SCHEMA, config=replace(SMALL, without=("chained",)))  # the first round alone
    t = fitted.metrics["trees"]
    assert t["used"] and 0 < t["weight"] <= 1 and round(t["weight"] * 20, 6).is_integer()
    assert t["val_loss_with"] < t["val_loss_without"] and fitted.model.trees is not None
    enc = fitted.codec.encode(table)
    w = fitted.codec.error_weights()
    with_trees = predict(fitted.model, enc.values, enc.observed, num_weights=w)
    trees, fitted.model.trees = fitted.model.trees, None
    without = predict(fitted.model, enc.values, enc.observed, num_weights=w)
    fitted.model.trees = trees
    truth = (X - np.array([fitted.codec.center_[f"w{j}"] for j in range(4)])) / np.array(
        [fitted.codec.scale_[f"w{j}"] for j in range(4)])
    holes = hide[:, 1]
    assert ((with_trees.num[:, 1] - truth[:, 1]) ** 2)[holes].mean() < 0.7 * ((without.num[:, 1] - truth[:, 1]) ** 2)[holes].mean()
    # observed cells are not predicted by the trees; the confidence is the networks'
    np.testing.assert_array_equal(with_trees.cell_error, without.cell_error)
    # saved in the weights file (no pickle) and loaded back: the same fills, through the Imputer too
    out = save_artifact(tmp_path / "m", model=fitted.model, codec=fitted.codec, schema=TWIN_SCHEMA, policy=None,
                        config=SMALL, metrics=fitted.metrics, error_reference=fitted.result.error_reference)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["architecture"]["trees"] == trees.sizes and manifest["format"] == FORMAT
    art = load_artifact(out, schema=TWIN_SCHEMA)
    np.testing.assert_array_equal(predict(art.model, enc.values, enc.observed, num_weights=w).num, with_trees.num)
    filled = Imputer(art).impute(table)
    got = np.asarray(filled.column("w1").to_pylist(), dtype=np.float64)
    seen = X[~hide[:, 1], 1]
    expect = np.clip(fitted.codec.unscale("w1", with_trees.num[:, 1]), seen.min(), seen.max())  # the codec's range
    np.testing.assert_allclose(got[holes], expect[holes], rtol=1e-5, atol=1e-9)
    # reverse training: the refined fill gets the same blend
    rows = np.flatnonzero(holes)[:30]
    init = direct_fill_inputs(fitted.model, enc.values, enc.observed, with_trees)
    res = reverse_impute(fitted.model, enc.values[rows], enc.observed[rows], enc.targets_num[rows],
                         enc.targets_cat[rows], init[rows], config=ReverseConfig(steps=10))
    fitted.model.trees = None
    bare = reverse_impute(fitted.model, enc.values[rows], enc.observed[rows], enc.targets_num[rows],
                          enc.targets_cat[rows], init[rows], config=ReverseConfig(steps=10))
    fitted.model.trees = trees
    blend = trees.lookup(enc.values[rows], enc.observed[rows])
    wt = trees.row_weights(blend)
    np.testing.assert_allclose(res.num, (1 - wt) * bare.num + wt * blend.num, rtol=1e-5, atol=1e-6)
    # node arrays that make no trees are refused at load, even under a matching hash
    from safetensors.torch import load_file, save_file
    state = load_file(str(out / "weights.safetensors"))
    state["trees.left"][0] = 10 ** 9
    save_file(state, str(out / "weights.safetensors"))
    manifest["weights_sha256"] = __import__("hashlib").sha256((out / "weights.safetensors").read_bytes()).hexdigest()
    manifest["artifact_sha256"] = _manifest_digest(manifest)  # the whole artifact re-hashed too
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="left index"):
        load_artifact(out)
    # switched off: no trees
    off = fit_model(table, TWIN_SCHEMA, config=replace(SMALL, without=("trees",)))
    assert off.metrics["trees"] is None and off.model.trees is None
    # a table wider than MAX_COLUMNS gets none (their cost grows with the square of the width)
    from lakefill.models import trees as tree_module

    monkeypatch.setattr(tree_module, "MAX_COLUMNS", 3)  # the Trees member reads it when it is fitted
    wide = fit_model(table, TWIN_SCHEMA, config=SMALL)
    assert wide.model.trees is None and not wide.metrics["trees"]["used"]
    assert "more than 3" in wide.metrics["trees"]["skipped"]


def test_a_chained_round_reads_the_fill_so_far_and_classifies_categories(tmp_path):
    """The chained member's trees read a row's holes as the fill so far (not as missing); its
    classifiers give a categorical column's probabilities, scikit-learn's own; saved and loaded."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    from lakefill.models import trees as tree_module
    from lakefill.models.donors import column_values

    table, X, hide = make_twin_table()
    codec = TableCodec(schema=TWIN_SCHEMA).fit(table)
    enc = codec.encode(table)
    slices = [(s.start, s.stop) for s in codec.input_slices()]
    rows, n = np.arange(400), table.num_rows
    rng = np.random.default_rng(1)
    so_far = np.column_stack([rng.normal(size=(n, 4)), rng.integers(0, 2, n)]).astype(np.float64)  # any fill
    chained = tree_module.fit_trees(enc.values, enc.observed, enc.targets_num, col_slices=slices, n_num=4, rows=rows,
                                    seed=0, fill=so_far, t_cat=enc.targets_cat, cat_sizes=codec.cat_sizes)
    assert chained.filled and chained.classified and chained.klass.tolist()[-2:] == [0, 1]  # c: two outputs, p and q
    V = column_values(enc.values, slices, 4).astype(np.float64)
    V[~enc.observed] = so_far[~enc.observed]  # what the trees were fitted on: holes as the fill so far
    given = enc.observed.copy()
    given[:, [1, 4]] = False  # every row's w1 and c are holes to predict
    W = column_values(enc.values, slices, 4).astype(np.float64)
    W[~given] = so_far[~given]
    got = chained.lookup(enc.values, given, so_far)
    has = enc.observed[rows, 4] & (enc.targets_cat[rows, 0] >= 0)
    clf = HistGradientBoostingClassifier(max_iter=tree_module.ROUNDS, learning_rate=0.1, early_stopping=False,
                                         random_state=0).fit(V[rows][has][:, :4], enc.targets_cat[rows, 0][has])
    assert got.cat_has[:, 0].all()
    np.testing.assert_allclose(got.cat_probs[0], clf.predict_proba(W[:, :4]), rtol=0, atol=1e-5)
    has = enc.observed[rows, 1]
    reg = HistGradientBoostingRegressor(max_iter=tree_module.ROUNDS, learning_rate=0.1, early_stopping=False,
                                        random_state=0).fit(V[rows][has][:, [0, 2, 3, 4]], enc.targets_num[rows, 1][has])
    np.testing.assert_allclose(got.num[:, 1], reg.predict(W[:, [0, 2, 3, 4]]), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="pass fill"):
        chained.lookup(enc.values, given)
    # in a model: blended into the numbers and the categories, saved in the weights file and loaded back
    fitted = fit_model(table, TWIN_SCHEMA, config=replace(SMALL, without=("trees", "chained", "donors", "gaussian")))
    bare = predict(fitted.model, enc.values, enc.observed)
    fitted.model.chained = tree_module.with_weight(chained, 0.5, 0.25)
    pred = predict(fitted.model, enc.values, enc.observed)
    holes = ~enc.observed[:, 4]
    blend = chained.lookup(enc.values, enc.observed, tree_module.fill_values(bare.num, bare.cat_probs))
    np.testing.assert_allclose(pred.cat_probs[0][holes], 0.75 * bare.cat_probs[0][holes] + 0.25 * blend.cat_probs[0][holes],
                               rtol=1e-5, atol=1e-6)
    out = save_artifact(tmp_path / "m", model=fitted.model, codec=fitted.codec, schema=TWIN_SCHEMA, policy=None,
                        config=SMALL, metrics=fitted.metrics, error_reference=fitted.result.error_reference)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["architecture"]["chained"] == {**chained.sizes, "filled": True, "classified": True}
    again = predict(load_artifact(out, schema=TWIN_SCHEMA).model, enc.values, enc.observed)
    np.testing.assert_array_equal(again.num, pred.num)
    np.testing.assert_array_equal(again.cat_probs[0], pred.cat_probs[0])


def test_the_categorical_loss_is_each_columns_cross_entropy_at_once():
    sizes = [3, 5, 2, 7]
    slices = [(0, 1), (1, 2)] + [(2 + sum(sizes[:k]) + k, 2 + sum(sizes[:k + 1]) + k + 1) for k in range(len(sizes))]
    model = MaskedAutoencoder(n_inputs=slices[-1][1], col_slices=slices, n_num=2, cat_sizes=sizes, hidden=8, depth=1,
                              code=2)
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(64, sum(sizes), generator=gen)).requires_grad_()
    targets = torch.stack([torch.randint(-1, k, (64,), generator=gen) for k in sizes], 1)  # -1: not observed
    score = (torch.rand(64, 6, generator=gen) < 0.6).float()
    loss, _ = cell_losses(model, torch.zeros(64, 2), torch.zeros(64, 2), logits, torch.zeros(64, 2), targets, score)
    expected = torch.zeros(64, len(sizes))
    for k, block in enumerate(torch.split(logits, sizes, dim=1)):
        ce = torch.nn.functional.cross_entropy(block, targets[:, k].clamp(min=0), reduction="none")
        expected[:, k] = torch.where(targets[:, k] >= 0, ce, torch.zeros_like(ce)) * score[:, 2 + k]
    assert torch.allclose(loss[:, 2:], expected, atol=1e-5)
    got, = torch.autograd.grad(loss.sum(), logits)
    want, = torch.autograd.grad(expected.sum(), logits)
    assert torch.allclose(got, want, atol=1e-6)


def _lrs(schedule, losses, steps_per_epoch):
    rates, stopped = [], None
    for epoch, val in enumerate(losses, 1):
        for _ in range(steps_per_epoch):
            schedule.step()
            rates.append(schedule.opt.param_groups[0]["lr"])
        if schedule.end_of_epoch(epoch, val):
            stopped = epoch
            break
    return rates, stopped


def test_the_plateau_schedule_decays_when_the_held_out_loss_stalls_and_not_before():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    # a loss still falling: the constant rate lasts until only the decay is left, every epoch is used
    rates, stopped = _lrs(_PlateauSchedule(opt, 1.0, 100, 4, patience=5, decay_share=0.25), [1 / e for e in range(1, 101)], 4)
    assert stopped == 100 and max(rates) == pytest.approx(1.0)
    assert rates[4 * 50] == pytest.approx(1.0) and rates[-1] < 1e-3  # decays at the end, to almost 0
    # a loss flat from epoch 10 on: 5 epochs of patience, then a decay of a quarter of the 15 epochs
    # run (4), at least 5
    losses = [1 / e for e in range(1, 11)] + [0.1] * 90
    rates, stopped = _lrs(_PlateauSchedule(opt, 1.0, 100, 4, patience=5, decay_share=0.25), losses, 4)
    assert stopped == 15 + 5 and rates[4 * 15 - 1] == pytest.approx(1.0) and rates[-1] < 1e-3
    assert all(a >= b for a, b in zip(rates[4 * 15:], rates[4 * 15 + 1:]))  # the decay only goes down


def test_a_table_learned_early_stops_early_and_training_repeats():
    _, masked, _ = make_table(n=300)
    cfg = AEConfig(hidden=16, depth=1, code=4, epochs=400, min_steps=0, plateau_patience=5, extra_sizes=(),
                   without=("gaussian", "donors", "trees", "chained"), random_state=0)
    first = fit_model(masked, SCHEMA, config=cfg)
    assert first.result.epochs_run < 200  # the plateau came long before the cap
    assert first.result.val_loss == pytest.approx(min(first.result.history))
    again = fit_model(masked, SCHEMA, config=cfg)
    assert again.result.history == first.result.history
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)


class _Clock:
    """A stand-in for time.perf_counter that advances a fixed tick per call: the budget logic
    is tested on its own arithmetic, not on this machine's speed."""

    def __init__(self, tick):
        self.now, self.tick = 0.0, tick

    def __call__(self):
        self.now += self.tick
        return self.now


def test_a_time_budget_cuts_the_schedule_and_skips_the_members_it_cannot_pay_for(monkeypatch):
    _, masked, _ = make_table(n=300)
    cfg = dict(hidden=16, depth=1, code=4, epochs=300, min_steps=0, extra_sizes=((8, 1, 2),), random_state=0)
    free = fit_model(masked, SCHEMA, config=AEConfig(**cfg, schedule="onecycle")).result
    monkeypatch.setattr(training.time, "perf_counter", _Clock(0.001))
    ample = fit_model(masked, SCHEMA, config=AEConfig(**cfg, schedule="onecycle", time_budget=1e6)).result
    assert ample.history == free.history  # a budget that does not bind changes nothing
    monkeypatch.setattr(training.time, "perf_counter", _Clock(0.001))
    tight = fit_model(masked, SCHEMA, config=AEConfig(**cfg, schedule="onecycle", time_budget=2.0)).result
    assert all(1 < m["epochs_run"] < 300 for m in tight.members)  # both networks planned to their share
    assert "skipped" not in tight.reports["gaussian"]  # the members after the networks had the rest of the time
    monkeypatch.setattr(training.time, "perf_counter", _Clock(0.001))
    spent = fit_model(masked, SCHEMA, config=AEConfig(**cfg, schedule="onecycle", time_budget=0.01)).result
    assert all(m["epochs_run"] == 1 for m in spent.members)  # stopped at the limit, inside the first epoch
    assert spent.reports["gaussian"]["used"] is False and "time budget" in spent.reports["gaussian"]["skipped"]
    assert spent.reports["trees"]["used"] is False and spent.reports["donors"]["used"] is False
    assert np.isfinite(spent.val_loss)  # a model all the same: the best epoch of each network
    with pytest.raises(ValueError, match="time_budget"):
        AEConfig(time_budget=-1)
    with pytest.raises(ValueError, match="schedule"):
        AEConfig(schedule="cosine")


def test_reverse_training_with_the_sources_objective_lifts_a_plain_autoencoder():
    """Protocol B's --model plain on a small stand-in for MNIST lines: the hidden half of each row
    repeats its given half; a plain autoencoder fed zeros there fills it badly, reverse training
    (the hidden cells as free parameters, the observed ones reproduced) fills it better."""
    from benchmarks.mnist_lines import PlainAutoencoder, train_plain

    rng = np.random.default_rng(0)
    half = (rng.random((600, 8)) < 0.5).astype(np.float32) * 0.8 + 0.1
    rows = np.concatenate([half, half], axis=1)
    model = train_plain(rows[:500], epochs=60, seed=0)
    assert isinstance(model, PlainAutoencoder) and model(torch.zeros(2, 16), None)[3].shape == (2, 16)
    test = rows[500:]
    observed = np.zeros_like(test, dtype=bool)
    observed[:, :8] = True
    blank = np.where(observed, test, 0.0).astype(np.float32)
    with torch.no_grad():
        direct = model(torch.from_numpy(blank), None)[0].numpy()
    init = np.where(observed, test, direct).astype(np.float32)
    cfg = ReverseConfig(steps=100, objective="reproduce", holdout=0.0)
    res = reverse_impute(model, blank, observed, np.where(observed, test, 0.0), np.zeros((100, 0), np.int64), init,
                         config=cfg)
    assert res.improved.all()  # no held-back cells: no safety net, every row takes its refinement
    before = np.abs(direct[:, 8:] - test[:, 8:]).mean()
    after = np.abs(res.num[:, 8:] - test[:, 8:]).mean()
    assert after < 0.8 * before
    again = reverse_impute(model, blank, observed, np.where(observed, test, 0.0), np.zeros((100, 0), np.int64), init,
                           config=cfg)
    assert np.array_equal(again.num, res.num)
    with pytest.raises(ValueError, match="objective"):
        ReverseConfig(objective="source")


def test_every_blend_weight_comes_from_one_grid():
    weight, before, best = grid_weight(lambda w: (w - 0.3) ** 2)
    assert (weight, before, best) == (0.3, 0.09, pytest.approx(0.0, abs=1e-12))
    assert grid_weight(lambda w: 1.0 + w)[0] == 0.0  # no gain: 0, the blend is left out


def test_a_table_of_categories_alone_gets_no_gaussian_member():
    schema = TableSchema.model_validate({"name": "cats", "columns": [
        {"name": "c", "type": "categorical", "impute": True, "categories": ["a", "b"]},
        {"name": "flag", "type": "boolean", "impute": True}]})
    _, masked, _ = make_table(n=200)
    fitted = fit_model(masked.select(["c", "flag", "_lf_row_id"]), schema,
                       config=AEConfig(hidden=16, depth=1, code=4, epochs=5, min_steps=0, extra_sizes=(), random_state=0))
    assert fitted.metrics["gaussian"] == {"skipped": "no numeric column", "used": False, "weight": 0.0}
    assert not fitted.model.has_gaussian


def test_reverse_early_stop_stops_the_rows_going_the_wrong_way_and_leaves_the_others_as_they_were(trained):
    """prune_at: a row whose held-back error at that step is not below its start stops there
    (its result is a run of that many steps); the others go on exactly as in a batch of their own."""
    _, masked, _, fitted = trained
    codec, model = fitted.codec, fitted.model
    enc = codec.encode(masked)
    pred = predict(model, enc.values, enc.observed)
    init = direct_fill_inputs(model, enc.values, enc.observed, pred)
    rows = np.nonzero((~enc.observed).sum(1) >= 1)[0]
    keys = rows * 3 + 11

    def run(idx, **cfg):
        return reverse_impute(model, enc.values[idx], enc.observed[idx], enc.targets_num[idx], enc.targets_cat[idx],
                              init[idx], config=ReverseConfig(**cfg), row_keys=keys[np.searchsorted(rows, idx)])

    pruned = run(rows, steps=20, check_every=20, prune_at=5)
    stopped, went_on = pruned.steps_run == 5, pruned.steps_run == 20
    assert stopped.any() and went_on.any() and (stopped | went_on).all()
    short = run(rows[stopped], steps=5, check_every=5, prune_at=0)
    assert (short.holdout_error_after >= short.holdout_error_before * 0.8 - 1e-6).all()  # none gained 20%: none kept
    alone = run(rows[went_on], steps=20, check_every=20, prune_at=5)
    assert (alone.steps_run == 20).all()
    for part, other in ((stopped, short), (went_on, alone)):
        np.testing.assert_array_equal(pruned.improved[part], other.improved)
        np.testing.assert_allclose(pruned.num[part], other.num, atol=1e-5)
        np.testing.assert_allclose(pruned.holdout_error_after[part], other.holdout_error_after, atol=1e-6)
        np.testing.assert_allclose(pruned.values[part], other.values, atol=1e-5)
    assert pruned.improved[went_on].any()


def test_reverse_trainings_written_out_adam_takes_torch_adams_steps():
    from lakefill.models.reverse import _Adam

    gen = torch.Generator().manual_seed(0)
    start = torch.randn(6, 4, generator=gen)
    ours, theirs = start.clone(), start.clone().requires_grad_(True)
    opt, ref = _Adam(ours, 0.05), torch.optim.Adam([theirs], lr=0.05)
    for step in range(25):
        grad = torch.randn(len(ours), 4, generator=gen) * (step + 1)
        opt.step(ours, grad)
        theirs.grad = grad.clone()
        ref.step()
        if step == 9:  # the rows that go on keep their moments
            keep = torch.tensor([0, 2, 5])
            ours, opt = ours[keep].clone(), opt.rows(keep)
            theirs = theirs.detach()[keep].clone().requires_grad_(True)
            state = ref.state[ref.param_groups[0]["params"][0]]
            ref = torch.optim.Adam([theirs], lr=0.05)
            ref.state[theirs] = {k: (v[keep].clone() if v.dim() else v.clone()) for k, v in state.items()}
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-6, atol=1e-6)
