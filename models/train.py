"""Training from a typed Arrow table: codec + masked autoencoder, ready to save."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyarrow as pa

from lakefill.models.autoencoder import AEConfig, Ensemble, TrainResult, train_ensemble
from lakefill.models.codec import TableCodec
from lakefill.schema import TableSchema

__all__ = ["FittedModel", "fit_model"]


@dataclass
class FittedModel:
    model: Ensemble
    codec: TableCodec
    result: TrainResult
    seconds: float

    @property
    def metrics(self) -> dict:
        r = self.result
        return {"epochs_run": r.epochs_run, "best_epoch": r.best_epoch, "val_loss": r.val_loss,
                "train_seconds": round(self.seconds, 3), "rows": int(self.rows), "networks": r.members,
                **r.reports}


def fit_model(table: pa.Table, schema: TableSchema, *, config: AEConfig = AEConfig(), progress: bool = False) -> FittedModel:
    """Fit the codec and train the model on ``table`` (typed, nulls = missing): one network per
    size of ``config`` (see ``AEConfig.extra_sizes``), used as their ensemble."""
    t0 = time.perf_counter()
    codec = TableCodec(schema=schema).fit(table)
    enc = codec.encode(table)
    if not enc.observed.any():
        raise ValueError("the training table has no observed cell in any imputed column")
    slices = [(s.start, s.stop) for s in codec.input_slices()]
    result = train_ensemble(enc.values, enc.observed, enc.targets_num, enc.targets_cat, col_slices=slices,
                            n_num=len(codec.num_columns_), cat_sizes=codec.cat_sizes, config=config,
                            num_weights=codec.error_weights(), progress=progress)
    fitted = FittedModel(result.model, codec, result, time.perf_counter() - t0)
    fitted.rows = table.num_rows
    return fitted
