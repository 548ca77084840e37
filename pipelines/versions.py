"""Model versions: retrained models written beside the job's model, never over it.

The job's ``model`` is version 1; a retrained model is written beside it as ``<model>.v2``,
``<model>.v3`` ... (the next free number). A new version is trained on the run's rows (at most
``sample_rows``) less a tenth kept aside by a hash of the row id, and judged on those rows: a
fifth of their observed cells hidden (seeded), filled by the new version and by the version the
run used, scored as the mean over hidden cells of the squared error scaled by the column's
variance (numbers) and of 0/1 (categories). The new version is *accepted* when its score is no
worse; its ``check.json`` records the check either way. A run uses the newest accepted version
(``resolve``); each commit names the version it used (``lakefill.model`` and
``lakefill.model_sha256`` in the Delta commit's metadata: one model fills a whole run, and every
row's ``_lf_run_id`` leads to its commit), so ``lakefill models list`` can show which runs used
which version.

``retrain``: ``never``; ``on_drift`` (after a run whose drift check flagged a column);
``every_n_runs`` (after ``retrain_every`` committed runs with the current version).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakefill.models.artifact import MANIFEST
from lakefill.transforms.storage import Location, as_location

__all__ = ["versions", "resolve", "next_version", "retrain", "runs_by_model", "CHECK"]

CHECK = "check.json"
CHECK_SHARE = 0.1
HIDE_SHARE = 0.2
_VERSION = re.compile(r"^(?P<base>.+)\.v(?P<n>[0-9]+)$")


def _base(model: Location) -> Location:
    m = _VERSION.match(model.name)
    return model.parent / m.group("base") if m else model


def versions(model: "str | Location", options: dict | None = None) -> list[tuple[int, Location]]:
    """The versions of a job's model (given the model or any of its versions), oldest first."""
    base = _base(as_location(model, options))
    found = [(1, base)] if (base / MANIFEST).exists() else []
    for child in base.parent.listdir():
        m = _VERSION.match(child.name)
        if m and m.group("base") == base.name and (child / MANIFEST).exists():
            found.append((int(m.group("n")), child))
    return sorted(found, key=lambda t: t[0])


def accepted(version: Location, n: int) -> bool:
    if n == 1:
        return True
    check = version / CHECK
    return check.exists() and bool(json.loads(check.read_text()).get("accepted"))


def resolve(model: "str | Location", options: dict | None = None) -> Location:
    """The newest accepted version of the job's model (the model itself when it has none)."""
    loc = as_location(model, options)
    for n, v in reversed(versions(loc, options)):
        if accepted(v, n):
            return v
    return loc


def next_version(model: "str | Location", options: dict | None = None) -> Location:
    loc = as_location(model, options)
    base = _base(loc)
    taken = [n for n, _ in versions(loc, options)]
    return base.parent / f"{base.name}.v{max(taken + [1]) + 1}"


def _split(table: pa.Table, share: float, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """(rows kept for training, check rows): a row is a check row by a seeded hash of its row id."""
    from lakefill.transforms.io import ROW_ID

    ids = np.asarray(table.column(ROW_ID).to_numpy(zero_copy_only=False), dtype=np.uint64)
    h = (ids * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)) >> np.uint64(40)
    check = (h % np.uint64(1000)) < np.uint64(int(share * 1000))
    mask = pa.array(check)
    return table.filter(pc.invert(mask)), table.filter(mask)


def check_score(artifact, rows: pa.Table, *, seed: int = 0) -> float:
    """A model's error on ``rows`` (typed) with a fifth of their observed imputed cells hidden:
    the mean over hidden cells of squared error / the column's variance (numbers) and of 0/1
    (categories). Lower is better."""
    from lakefill.transforms.impute import Imputer

    rng = np.random.default_rng(seed)
    columns = [c for c in artifact.schema.columns if c.impute and c.name in rows.column_names]
    hidden, arrays = {}, {n: rows.column(n) for n in rows.column_names}
    for c in columns:
        col = rows.column(c.name)
        observed = np.asarray(pc.is_valid(col).to_numpy(zero_copy_only=False), dtype=bool)
        hide = observed & (rng.random(len(col)) < HIDE_SHARE)
        hidden[c.name] = (hide, col)
        arrays[c.name] = pc.if_else(pa.array(hide), pa.scalar(None, col.type), col)
    filled = Imputer(artifact, device="cpu").impute(pa.table(arrays))
    errors = []
    for c in columns:
        hide, truth = hidden[c.name]
        if not hide.any():
            continue
        got = filled.column(c.name).filter(pa.array(hide)).to_pylist()
        want = truth.filter(pa.array(hide)).to_pylist()
        if c.type in ("numeric", "integer"):
            all_obs = np.asarray([v for v in truth.to_pylist() if v is not None], dtype=float)
            var = float(all_obs.var()) or 1.0
            errors += [(float(g) - float(w)) ** 2 / var if g is not None else 1.0 for g, w in zip(got, want)]
        else:
            errors += [float(g != w) for g, w in zip(got, want)]
    return float(np.mean(errors)) if errors else float("nan")


def retrain(prep, run_id: str, *, reason: str, log=print) -> dict:
    """Train a new version of the job's model on the run's rows (``prep``: the run's prepared
    state; its ``config.model`` the version it used), check it against that version on rows
    kept aside, and write it beside the others (beside the version the run resolved, when the run
    adapted it: ``prep.base_model``). Returns what it did (the report's ``retrain``)."""
    from lakefill.models.training import fit_model
    from lakefill.pipelines.launcher import save_trained, training_rows
    from lakefill.transforms.impute import load_model_at

    cfg = prep.config
    current = cfg.location(prep.base_model or cfg.model)  # a version of the job's model, not a run's adaptation of it
    base = prep.artifact if current.uri == cfg.location(cfg.model).uri else load_model_at(current, schema=prep.schema)
    _, typed, good, _, info = training_rows(cfg.reads, prep.schema, sample_rows=cfg.sample_rows,
                                            csv_options=cfg.csv_options, options=cfg.storage_options,
                                            train_rows=cfg.training.train_rows, seed=cfg.training.seed)
    train, check = _split(good, CHECK_SHARE)
    if train.num_rows < 20 or check.num_rows < 5:
        return {"reason": reason, "trained": False, "why": f"too few rows to retrain on ({good.num_rows} valid rows)"}
    target = next_version(current)
    log(f"retraining ({reason}): {train.num_rows} rows of run {run_id}, {check.num_rows} kept aside; writing {target}")
    config = cfg.ae_config()
    fitted = fit_model(train, prep.schema, config=config)
    # written in place: a version is used only once its check.json, written last, accepts it
    save_trained(target, fitted, prep.schema, typed.policy.to_dict(), config, train, sample=info)
    new = load_model_at(target, schema=prep.schema)
    score_new = check_score(new, check)
    score_old = check_score(base, check)
    ok = bool(np.isfinite(score_new) and (not np.isfinite(score_old) or score_new <= score_old))
    info = {"reason": reason, "trained": True, "version": str(target), "run_id": run_id,
            "trained_rows": train.num_rows, "check_rows": check.num_rows, "check_score": round(score_new, 6),
            "check_score_of_current": round(score_old, 6), "current": str(current), "accepted": ok,
            "model_sha256": new.sha256}
    (target / CHECK).write_text(json.dumps(info, indent=2))
    log(f"  {'accepted' if ok else 'not accepted'}: check score {score_new:.4g} (current {score_old:.4g})")
    return info


def runs_by_model(output: "str | Location", options: dict | None = None) -> dict[str, list[str]]:
    """The run ids that committed to an output's table, by the model version each named."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    uri, opts = (as_location(output, options) / "table").delta()
    try:
        dt = DeltaTable(uri, storage_options=opts)
    except TableNotFoundError:
        return {}
    out: dict[str, list[str]] = {}
    for entry in reversed(dt.history()):
        if "lakefill.run_id" in entry and "lakefill.model" in entry:
            out.setdefault(entry["lakefill.model"], []).append(entry["lakefill.run_id"])
    return out
