"""Adding a member to the model is one class and one ``register`` call: this file is the whole
change. The toy member (each numeric column's median of the training rows, blended into the
fill) is trained with the rest, saved, loaded, used by the Imputer, switched off by its config
entry and its ``--no-<name>`` flag, and reported in the metrics under its name."""

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from lakefill.errors import ModelError
from lakefill.models import members
from lakefill.models.artifact import load_artifact, save_artifact
from lakefill.models.config import AEConfig
from lakefill.models.mixture import predict
from lakefill.models.training import fit_model
from lakefill.schema import TableSchema
from lakefill.transforms.impute import Imputer

SCHEMA = TableSchema.model_validate({"name": "toy", "columns": [
    {"name": "x", "type": "numeric", "impute": True},
    {"name": "y", "type": "numeric", "impute": True},
    {"name": "c", "type": "categorical", "impute": True, "categories": ["a", "b"]}]})
CONFIG = AEConfig(hidden=16, depth=1, code=4, epochs=10, min_steps=0, extra_sizes=(), random_state=0,
                  without=("trees", "chained", "donors", "gaussian"))


class _Medians(torch.nn.Module):
    def __init__(self, n_num: int):
        super().__init__()
        self.register_buffer("median", torch.zeros(n_num))
        self.register_buffer("weight", torch.zeros(()))


class Medians(members.Blend):
    """Each numeric column's median on the training rows, blended in with one weight. A toy: it
    joins the model with a weight of at least 0.05 so that every path below carries it."""

    name = "medians"
    help = "do not blend the columns' medians into the fill"

    def fit(self, ensemble, data):
        n_num = ensemble.n_num
        rows = data.train_rows
        scaled = np.where(data.observed[rows][:, :n_num], data.t_num[rows], np.nan)
        module = _Medians(n_num)
        module.median.copy_(torch.from_numpy(np.nanmedian(scaled, axis=0).astype(np.float32)))
        given = data.observed[data.val_idx] & ~data.val_hide
        pred = predict(ensemble, data.values[data.val_idx], given).num
        hidden = data.val_hide[:, :n_num]
        truth = data.t_num[data.val_idx]
        median = module.median.numpy()

        def loss(w):
            return float(((((1 - w) * pred + w * median) - truth) ** 2)[hidden].sum())

        weight, before, best = members.grid_weight(loss)
        module.weight.fill_(max(weight, 0.05))
        ensemble.medians = module
        return {"weight": float(module.weight), "val_loss_without": before, "val_loss_with": best}

    def apply(self, member, values, given, num, probs, var, num_weights):
        w = float(member.weight)
        return ((1 - w) * num + w * member.median.numpy()).astype(np.float32), probs, var, {}

    def architecture(self, member):
        return int(member.median.numel()) if member is not None else 0

    def build(self, entry, layout):
        return _Medians(int(entry)) if entry else None


@pytest.fixture
def registered():
    member = members.register(Medians())
    yield member
    members.unregister(member.name)


def _table(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    y = 2 * x + rng.normal(0, 0.3, n)
    c = np.where(x > 0, "a", "b")
    hide = rng.random((n, 3)) < 0.2
    cols = {"x": pa.array(x), "y": pa.array(y), "c": pa.array(c.tolist())}
    out = {k: pc.if_else(pa.array(hide[:, j]), pa.scalar(None, v.type), v) for j, (k, v) in enumerate(cols.items())}
    return pa.table(out).append_column("_lf_row_id", pa.array(np.arange(n), pa.int64()))


def test_a_member_added_in_one_file_is_trained_saved_loaded_and_imputes(registered, tmp_path):
    table = _table()
    fitted = fit_model(table, SCHEMA, config=CONFIG)
    report = fitted.metrics["medians"]
    assert report["weight"] >= 0.05 and "val_loss_with" in report
    assert fitted.model.medians is not None
    enc = fitted.codec.encode(table)
    direct = predict(fitted.model, enc.values, enc.observed).num
    out = save_artifact(tmp_path / "m", model=fitted.model, codec=fitted.codec, schema=SCHEMA, policy=None,
                        config=CONFIG, metrics=fitted.metrics, error_reference=fitted.result.error_reference)
    artifact = load_artifact(out)
    assert artifact.model.medians is not None
    torch.testing.assert_close(artifact.model.medians.median, fitted.model.medians.median)
    np.testing.assert_array_equal(predict(artifact.model, enc.values, enc.observed).num, direct)
    filled = Imputer(artifact).impute(table)
    assert filled.column("x").null_count == 0 and filled.column("y").null_count == 0
    # without the member the fill differs: it was used
    alone = fitted.model.medians
    fitted.model.medians = None
    try:
        assert not np.allclose(predict(fitted.model, enc.values, enc.observed).num, direct)
    finally:
        fitted.model.medians = alone


def test_a_member_is_switched_off_by_its_name_and_its_flag(registered):
    off = fit_model(_table(), SCHEMA, config=replace(CONFIG, without=CONFIG.without + ("medians",)))
    assert off.metrics["medians"] is None and off.model.medians is None
    from lakefill.pipelines.cli import build_parser

    args = build_parser().parse_args(["train", "--input", "in.csv", "--out", "m", "--no-medians"])
    assert args.no_medians is True
    with pytest.raises(ValueError, match="unknown member"):
        AEConfig(without=("forest",))


def test_a_model_with_a_member_this_process_lacks_is_refused_by_name(registered, tmp_path):
    fitted = fit_model(_table(), SCHEMA, config=CONFIG)
    out = save_artifact(tmp_path / "m", model=fitted.model, codec=fitted.codec, schema=SCHEMA, policy=None,
                        config=CONFIG, metrics=fitted.metrics, error_reference=fitted.result.error_reference)
    members.unregister("medians")
    try:
        with pytest.raises(ModelError, match="medians"):
            load_artifact(out)
    finally:
        members.register(registered)
