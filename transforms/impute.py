"""Imputation and refinement of Arrow batches with a loaded model (the engine-agnostic core).

``Imputer.impute`` fills every null cell of the model's columns (except the cells that
``_lf_not_applicable`` lists: a value that does not exist is never invented) with one pass of the masked
autoencoder and adds provenance: ``_lf_imputed`` (the columns filled in the row), ``_lf_method``
(``none``; ``ae``; ``adapted``: filled by the networks adapted to the run, see ``lakefill.models.adapt``; ``donor``: the model's fill blended with a copy of the row found among the
training rows, see ``lakefill.models.donors``; ``reverse``) and ``_lf_confidence`` in [0, 1]. ``Imputer.refine`` re-works
rows by reverse training; a row whose held-back cells do not get better keeps its direct fill.

Row confidence = 1 / (1 + e / e_ref): e is the mean predicted error of the row's imputed cells
(predicted variance on the min-max scale for numbers, 1 - max probability for categories) and
e_ref the median of that error over the training run's validation cells. A row with nothing
to impute has confidence 1.
"""

from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakefill.models.artifact import ModelArtifact, load_artifact, save_artifact
from lakefill.models.mixture import predict
from lakefill.models.adapt import AdaptConfig, adapt_model
from lakefill.models.reverse import ReverseConfig, reverse_impute
from lakefill._arrow import flags_to_lists, lists_to_flags
from lakefill._memory import keep_freed_memory
from lakefill.transforms.detect import NOT_APPLICABLE
from lakefill.transforms.io import ROW_ID

__all__ = ["Imputer", "resolve_device", "load_model_at", "save_model_to", "IMPUTED", "METHOD", "CONFIDENCE", "CHECK_BEFORE", "CHECK_AFTER",
           "PROVENANCE_COLUMNS", "imputed_mask"]

IMPUTED = "_lf_imputed"
METHOD = "_lf_method"
CONFIDENCE = "_lf_confidence"
# reverse training's own check: the error on the row's held-back observed cells before it and
# with the fill the row keeps (equal when the refinement was not kept); null for rows not re-worked
CHECK_BEFORE = "_lf_check_before"
CHECK_AFTER = "_lf_check_after"
PROVENANCE_COLUMNS = (IMPUTED, METHOD, CONFIDENCE, CHECK_BEFORE, CHECK_AFTER)


class Imputer:
    """Applies a loaded ``ModelArtifact`` to batches. Build once per worker; call per batch."""

    def __init__(self, artifact: ModelArtifact, *, reverse: ReverseConfig = ReverseConfig(), device: str = "cpu"):
        keep_freed_memory()  # once per process: a batch's large arrays are not faulted in again for every batch
        self.artifact = artifact
        self.reverse = reverse
        self.device = resolve_device(device)
        artifact.model.to(self.device)
        self._weights = artifact.codec.error_weights()
        # provenance lists columns in the schema's order, not the model's internal order
        order = {name: i for i, name in enumerate(artifact.schema.names)}
        self._schema_order = np.argsort([order.get(c, len(order)) for c in self.columns], kind="stable")

    @property
    def columns(self) -> list[str]:
        return self.artifact.codec.columns

    def impute(self, table: pa.Table, *, adapted: bool = False, precision: str = "fp32") -> pa.Table:
        """``adapted``: fill through the artifact's adapted networks where it has them (the job's
        ``adapt_rows: all``); those rows' ``_lf_method`` is ``adapted``. ``precision``: ``bf16``
        runs the forward pass under ``torch.autocast(bfloat16)`` (the outputs come back as float32;
        the same input gives the same fill on the same machine)."""
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        codec, model = self.artifact.codec, self.artifact.model
        adapted = adapted and self.artifact.adapted is not None
        if adapted:
            model = self.artifact.adapted
        missing_cols = [c for c in self.columns if c not in table.column_names]
        if missing_cols:
            raise KeyError(f"the batch lacks the model's column(s) {missing_cols}")
        enc = codec.encode(table)
        with autocast(precision, self.device):
            pred = predict(model, enc.values, enc.observed, num_weights=self._weights)
        fill = ~enc.observed
        if NOT_APPLICABLE in table.column_names:  # a value that does not exist is never invented
            fill &= ~imputed_mask(table.column(NOT_APPLICABLE), self.columns)
        out = codec.decode_into(table, pred.num, pred.cat_probs, fill)
        n_fill = fill.sum(axis=1)
        err = np.where(n_fill > 0, (pred.cell_error * fill).sum(axis=1) / np.maximum(n_fill, 1), 0.0)
        confidence = np.where(n_fill > 0, 1.0 / (1.0 + err / self.artifact.error_reference), 1.0)
        method = np.where(n_fill > 0, "adapted" if adapted else "ae", "none")
        if pred.donor_rows is not None:  # a copy of the row (a duplicate record) weighed on its fill
            method = np.where((n_fill > 0) & pred.donor_rows, "donor", method)
        names = np.asarray(self.columns, dtype=object)[self._schema_order]
        return _with_provenance(out, fill[:, self._schema_order], names, method, confidence)

    def adapt(self, table: pa.Table, config: AdaptConfig = AdaptConfig()) -> tuple[object, dict]:
        """The model with its networks fine-tuned on ``table``'s observed cells (rows from
        ``impute``: their imputed cells count as missing), for ``refine(..., adapted=)``; and a
        report (``lakefill.models.adapt``). The rows need their ``_lf_row_id``: it decides which
        cells each row holds back for refinement's check, and those are left out here."""
        if ROW_ID not in table.column_names or table.column(ROW_ID).null_count:
            raise ValueError(f"adapt needs each row's {ROW_ID!r} (the cells a row holds back are keyed by it)")
        if IMPUTED in table.column_names:
            table = _blank(table, imputed_mask(table.column(IMPUTED), self.columns), self.columns)
        enc = self.artifact.codec.encode(table)
        return adapt_model(self.artifact.model, enc.values, enc.observed, enc.targets_num, enc.targets_cat,
                           row_keys=table.column(ROW_ID).to_numpy(), config=config, reverse=self.reverse)

    def refine(self, table: pa.Table, *, adapted=None, model=None) -> pa.Table:
        """Reverse training on already-imputed rows (their ``_lf_imputed`` says which cells).
        ``adapted``: a model from ``adapt``; the rows are then refined through it, and a row keeps
        the result only if its held-back cells say it beats this model's direct fill. ``model``:
        refine through that model instead of the artifact's (rows filled by the adapted networks)."""
        if table.num_rows == 0:
            return table
        if IMPUTED not in table.column_names:
            raise ValueError(f"refine needs rows from impute (with the {IMPUTED!r} column)")
        codec, model = self.artifact.codec, model if model is not None else self.artifact.model
        fill = imputed_mask(table.column(IMPUTED), self.columns)  # in the model's column order
        blanked = _blank(table, fill, self.columns)
        enc = codec.encode(blanked)
        init = codec.encode(table).values  # the direct fills, in input space
        keys = table.column(ROW_ID).to_numpy() if ROW_ID in table.column_names and table.column(ROW_ID).null_count == 0 else None
        if adapted is not None and keys is None:
            raise ValueError(f"refine with an adapted model needs each row's {ROW_ID!r}")
        res = reverse_impute(model, enc.values, enc.observed, enc.targets_num, enc.targets_cat, init, config=self.reverse,
                             row_keys=keys, adapted=adapted)
        use = fill & res.improved[:, None]
        for name in (CHECK_BEFORE, CHECK_AFTER):  # rows imputed by an older lakefill lack them
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, pa.float64()))
        measured = fill.any(axis=1) & (res.holdout_error_before > 0)  # rows with held-back cells to check on
        table = table.set_column(table.column_names.index(CHECK_BEFORE), CHECK_BEFORE,
                                 pa.array(res.holdout_error_before.astype(np.float64), pa.float64(), mask=~measured))
        table = table.set_column(table.column_names.index(CHECK_AFTER), CHECK_AFTER,
                                 pa.array(res.holdout_error_after.astype(np.float64), pa.float64(), mask=~measured))
        if not use.any():
            return table
        out = codec.decode_into(table, res.num, res.cat_probs, use)
        method = np.where(res.improved & fill.any(axis=1), "reverse", np.asarray(table.column(METHOD).to_pylist(), dtype=object))
        return out.set_column(out.column_names.index(METHOD), METHOD, pa.array(method.tolist(), pa.string()))


def autocast(precision: str, device: str):
    """The context the forward pass runs in: bfloat16 autocast on the model's device, or nothing (fp32)."""
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", dtype=torch.bfloat16)


def resolve_device(device: str) -> str:
    """auto: the GPU when torch sees one, else the CPU; gpu: a GPU or an error; cpu; or a torch name (cuda:1)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "gpu":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'gpu' was asked for but torch sees no CUDA GPU on this machine")
        return "cuda"
    if device == "cpu" or device.startswith("cuda"):
        return device
    raise ValueError(f"device must be auto, cpu or gpu, got {device!r}")


def _with_provenance(table: pa.Table, fill: np.ndarray, names: np.ndarray, method: np.ndarray, confidence: np.ndarray) -> pa.Table:
    for name in PROVENANCE_COLUMNS:
        if name in table.column_names:
            table = table.drop_columns([name])
    table = table.append_column(IMPUTED, flags_to_lists(fill, names))
    table = table.append_column(METHOD, pa.array(method.tolist(), pa.string()))
    table = table.append_column(CONFIDENCE, pa.array(confidence, pa.float64()))
    table = table.append_column(CHECK_BEFORE, pa.nulls(table.num_rows, pa.float64()))
    return table.append_column(CHECK_AFTER, pa.nulls(table.num_rows, pa.float64()))


def imputed_mask(col, columns: list[str]) -> np.ndarray:
    """(rows, len(columns)) bool: which of ``columns`` each row's ``_lf_imputed`` list names."""
    return lists_to_flags(col, columns)


def _blank(table: pa.Table, fill: np.ndarray, columns: list[str]) -> pa.Table:
    for j, name in enumerate(columns):
        if fill[:, j].any():
            col = table.column(name)
            table = table.set_column(table.column_names.index(name), name,
                                     pc.if_else(pa.array(fill[:, j]), pa.scalar(None, col.type), col))
    return table


def load_model_at(where, schema=None) -> ModelArtifact:
    """The artifact at a ``Location`` (a local folder or a folder on an object store, read there
    directly), checked by its hashes and, with ``schema``, against the job's columns."""
    from lakefill.transforms.storage import as_location

    return load_artifact(as_location(where), schema=schema)


def save_model_to(where, **artifact) -> None:
    """``save_artifact`` into a ``Location`` (local or on an object store, written there directly)."""
    from lakefill.transforms.storage import as_location

    save_artifact(as_location(where), **artifact)
