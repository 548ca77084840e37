"""The run report people look at: ``report.html`` beside each run's ``report.json``.

Counts (in, written, quarantined by reason, disguised nulls per column, cells imputed, rows
refined), links to the GX Data Docs and the tables, and matplotlib plots embedded as PNG (the
page needs no network): missingness per column before and after, observed vs imputed values
per column, the confidence histogram with the refinement threshold marked, and the error
reduction of the re-worked rows where it can be measured (reverse training's check on each
row's held-back observed cells, ``_lf_check_before`` / ``_lf_check_after``).

The page's cost does not grow with the run: the per-column counts come from the run's
counters (``written_*``, counted by the plan's finish step), the value plots from the run's
first ``SAMPLE_ROWS`` rows, the reverse-training check from its two columns of the re-worked
rows only. (A report of a run made before those counters reads the counts' three columns.)

    lakefill report OUT/reports/RUN_ID     # (re)renders and prints the page's path and counts
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakefill._arrow import list_value_counts

__all__ = ["refine_check", "render_report", "column_shares", "column_shares_of_run"]

MAX_COLUMNS_PLOTTED = 12
SAMPLE_ROWS = 100_000  # the value plots read at most this many of the run's rows


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _run_rows(report: dict, options: dict | None = None, *, columns: list[str] | None = None,
              limit: int | None = None, where=None) -> pa.Table | None:
    """This run's rows of the table (``columns`` of them that exist, the first ``limit`` rows,
    those matching the dataset expression ``where``); None when there is no table."""
    import pyarrow.dataset as ds
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    from lakefill.transforms.storage import Location

    try:
        uri, opts = Location(report["table"], options or {}).delta()
        dataset = DeltaTable(uri, storage_options=opts).to_pyarrow_dataset()
        names = dataset.schema.names
        # only this run's rows: files of other runs are pruned on their min/max statistics
        flt = (ds.field("_lf_run_id") == report["run_id"]) if "_lf_run_id" in names else None
        if where is not None:
            flt = where if flt is None else flt & where
        cols = None if columns is None else [c for c in columns if c in names]
        if limit is not None:
            return dataset.head(limit, columns=cols, filter=flt)
        return dataset.to_table(columns=cols, filter=flt)
    except (TableNotFoundError, OSError, KeyError):
        return None


def _imputed_masks(table: pa.Table) -> dict[str, np.ndarray]:
    """Per imputed column, which rows had it filled (from the ``_lf_imputed`` lists, in Arrow)."""
    from lakefill.transforms.impute import imputed_mask

    col = table.column("_lf_imputed").combine_chunks()
    names = pc.unique(pc.list_flatten(col)).drop_null().to_pylist()
    mask = imputed_mask(col, names)
    return {name: mask[:, j] for j, name in enumerate(names)}


def _plots(report: dict, table: pa.Table | None, check: dict | None, of_rows: int | None = None) -> list[tuple[str, str]]:
    """``table``: the run's rows the value plots show; ``of_rows``: how many it wrote (the
    titles say when the plots show only its first rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    conf = report.get("confidence_histogram") or {}
    if conf.get("counts"):
        edges, counts = np.asarray(conf["edges"]), np.asarray(conf["counts"])
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4c72b0", edgecolor="white")
        t = report.get("confidence_threshold")
        if t is not None:
            ax.axvline(t, color="#c44e52", linestyle="--", label=f"refine below {t}")
            ax.legend()
        ax.set_xlabel("row confidence")
        ax.set_ylabel("rows")
        ax.set_title("Confidence of the written rows")
        plots.append(("Confidence histogram", _png(fig)))
    if table is None or table.num_rows == 0 or "_lf_imputed" not in table.column_names:
        return plots
    masks = _imputed_masks(table)
    part = f" (the run's first {table.num_rows:,} of {of_rows:,} rows)" if of_rows and of_rows > table.num_rows else ""
    data_cols = [c for c in table.column_names if not c.startswith("_lf_")]
    before = [int(masks.get(c, np.zeros(0, bool)).sum()) + table.column(c).null_count for c in data_cols]
    after = [table.column(c).null_count for c in data_cols]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(data_cols)), 3.2))
    x = np.arange(len(data_cols))
    ax.bar(x - 0.2, np.asarray(before) / table.num_rows, 0.4, label="before (nulls + disguised nulls)", color="#dd8452")
    ax.bar(x + 0.2, np.asarray(after) / table.num_rows, 0.4, label="after", color="#55a868")
    ax.set_xticks(x, data_cols, rotation=45, ha="right")
    ax.set_ylabel("share of rows missing")
    ax.set_title("Missingness per column, before and after" + part)
    ax.legend()
    plots.append(("Missingness per column", _png(fig)))
    numeric = [c for c in data_cols if c in masks and (pa.types.is_integer(table.column(c).type)
                                                         or pa.types.is_floating(table.column(c).type))]
    numeric = numeric[:MAX_COLUMNS_PLOTTED]
    if numeric:
        cols = min(3, len(numeric))
        rows = (len(numeric) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
        for ax, name in zip(axes.ravel(), numeric):
            v = table.column(name).to_numpy(zero_copy_only=False).astype(float)
            m = masks[name]
            obs, imp = v[~m & ~np.isnan(v)], v[m & ~np.isnan(v)]
            bins = np.histogram_bin_edges(np.concatenate([obs, imp]) if len(imp) else obs, bins=30)
            # histograms counted here and drawn as one filled outline each (not 30 bars per series)
            ax.stairs(np.histogram(obs, bins=bins, density=True)[0], bins, fill=True, alpha=0.6,
                      label=f"observed ({len(obs)})", color="#4c72b0")
            if len(imp):
                ax.stairs(np.histogram(imp, bins=bins, density=True)[0], bins, fill=True, alpha=0.6,
                          label=f"imputed ({len(imp)})", color="#dd8452")
            ax.set_title(name)
            ax.legend(fontsize=7)
        for ax in axes.ravel()[len(numeric):]:
            ax.axis("off")
        fig.suptitle("Observed vs imputed values" + part)
        fig.tight_layout()
        plots.append(("Observed vs imputed values (numeric columns)", _png(fig)))
    cats = [c for c in data_cols if c in masks and pa.types.is_string(table.column(c).type)][:MAX_COLUMNS_PLOTTED]
    if cats:
        fig, axes = plt.subplots(1, len(cats), figsize=(4 * len(cats), 3), squeeze=False)
        for ax, name in zip(axes.ravel(), cats):
            v, m = table.column(name), masks[name]
            shares = [_shares(v.filter(pa.array(~m))), _shares(v.filter(pa.array(m)))]
            levels = sorted(set(shares[0]) | set(shares[1]))[:15]
            x = np.arange(len(levels))
            obs = [shares[0].get(lv, 0.0) for lv in levels]
            imp = [shares[1].get(lv, 0.0) for lv in levels]
            ax.bar(x - 0.2, obs, 0.4, label="observed", color="#4c72b0")
            ax.bar(x + 0.2, imp, 0.4, label="imputed", color="#dd8452")
            ax.set_xticks(x, levels, rotation=45, ha="right")
            ax.set_title(name)
            ax.legend(fontsize=7)
        fig.suptitle("Observed vs imputed categories (share of rows)" + part)
        fig.tight_layout()
        plots.append(("Observed vs imputed categories", _png(fig)))
    if check:
        before, after = check["_before"], check["_after"]
        fig, ax = plt.subplots(figsize=(4.6, 4.2))
        kept = after < before
        ax.scatter(before[~kept], after[~kept], s=10, alpha=0.5, color="#8c8c8c", label=f"direct fill kept ({int((~kept).sum())})")
        ax.scatter(before[kept], after[kept], s=10, alpha=0.7, color="#55a868", label=f"refinement kept ({int(kept.sum())})")
        hi = float(max(before.max(), after.max()))
        ax.plot([0, hi], [0, hi], color="#c44e52", linestyle="--", linewidth=1)
        ax.set_xlabel("held-back error before reverse training")
        ax.set_ylabel("held-back error of the kept fill")
        ax.set_title(f"Re-worked rows: error {check['error_reduction']:.1%} lower")
        ax.legend(fontsize=7)
        plots.append(("Error reduction of the re-worked rows", _png(fig)))
    for col, d in (report.get("drift") or {}).items():
        if not d.get("drifted"):
            continue
        fig, ax = plt.subplots(figsize=(6.4, 3.0))
        x = np.arange(len(d["bins"]))
        ax.bar(x - 0.2, d["share_training"], width=0.4, color="#4c72b0", label="training rows")
        ax.bar(x + 0.2, d["share_run"], width=0.4, color="#c44e52", label="this run")
        ax.set_xticks(x, [str(b)[:14] for b in d["bins"]], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("share of observed cells")
        ax.set_title(f"Drift of {col}: {d['measure']} {d['distance']:.3f} (threshold {d['threshold']:.3f})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        plots.append((f"Drift of {col}", _png(fig)))
    return plots


def _shares(values) -> dict:
    """Each non-null value's share of the rows given (null rows count in the total)."""
    if len(values) == 0:
        return {}
    counts = pc.value_counts(values)
    return {v: c / len(values) for v, c in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())
            if v is not None}


def refine_check(table: pa.Table | None) -> dict | None:
    """Reverse training's measured effect on the run's re-worked rows, from the provenance columns."""
    if table is None or "_lf_check_before" not in table.column_names:
        return None
    b = table.column("_lf_check_before").to_numpy(zero_copy_only=False).astype(float)
    a = table.column("_lf_check_after").to_numpy(zero_copy_only=False).astype(float)
    ok = ~np.isnan(b) & ~np.isnan(a)
    if not ok.any():
        return None
    b, a = b[ok], a[ok]
    return {"rows_checked": int(ok.sum()), "rows_refinement_kept": int((a < b).sum()),
            "mean_error_before": float(b.mean()), "mean_error_after": float(a.mean()),
            "error_reduction": float(1 - a.sum() / b.sum()) if b.sum() > 0 else 0.0, "_before": b, "_after": a}


def _table(rows: dict, head: tuple[str, str]) -> str:
    body = "".join(f"<tr><td>{html.escape(str(k))}</td><td class=n>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    return f"<table><tr><th>{head[0]}</th><th>{head[1]}</th></tr>{body}</table>"


def _distance(d: dict) -> str:
    return "-" if d.get("distance") is None else f"{d['distance']:.3f}"


def _drift_table(report: dict) -> str:
    """Per profiled column: the distance of the run's observed cells to the model's training rows."""
    drift = report.get("drift") or {}
    if not drift:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("column", "measure", "distance", "threshold", "observed cells",
                                            "missing share: training / run"))
    body = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{d['measure']}</td>"
        f"<td class=\"n {'bad' if d.get('drifted') else ''}\">{_distance(d)}</td>"
        f"<td class=n>{d['threshold']:.3f}</td><td class=n>{d['observed']}</td>"
        f"<td class=n>{d['missing_share_training']:.1%} / "
        f"{'-' if d.get('missing_share_run') is None else format(d['missing_share_run'], '.1%')}</td></tr>"
        for c, d in drift.items())
    conf = report.get("drift_confidence") or {}
    if conf:
        fmt = lambda v, p: "-" if v is None else format(v, p)  # noqa: E731
        body += (f"<tr><td><i>row confidence</i></td><td>mean</td><td class=n>{fmt(conf.get('run_mean_confidence'), '.3f')}"
                 f"</td><td class=n>training {fmt(conf.get('training_mean_confidence'), '.3f')}</td>"
                 f"<td class=n colspan=2>routed {fmt(conf.get('run_routed_share'), '.1%')} "
                 f"(training {fmt(conf.get('training_routed_share'), '.1%')})</td></tr>")
    drifted = [c for c, d in drift.items() if d.get("drifted")]
    title = (f'<h2 class="bad">Drift: {len(drifted)} column(s) moved away from the training rows</h2>' if drifted
             else "<h2>Drift against the model's training rows</h2>")
    return f"{title}<table id=drift><tr>{head}</tr>{body}</table>"


def suspects_of(report: dict) -> list[tuple[str, dict]]:
    """The run's suspects: values a detector took for missing but kept as values (a column's
    majority, or its edge that does not stand apart), each as (column, finding)."""
    columns = (report.get("detection") or {}).get("columns") or {}
    return [(c, f) for c, fs in columns.items() for f in fs if f.get("suspect")]


def _suspects_section(report: dict) -> str:
    rows = suspects_of(report)
    if not rows:
        return ""
    items = "".join(f"<li><b>{html.escape(c)}</b> <code>{html.escape(f['value'])}</code> ({f['count']} cells of the "
                    f"sample, {f.get('share', 0):.1%}): {html.escape(f['evidence'])}</li>" for c, f in rows)
    return (f'<h2 class="bad">Suspects: {len(rows)} value(s) kept that may stand for missing</h2>'
            f"<p>Kept in the table as values. To replace one, list it in the column's <code>null_values</code> in the "
            f"schema; to silence it, in <code>not_null_values</code>.</p><ul id=suspects>{items}</ul>")


def _findings_table(report: dict) -> str:
    """The run's disguised-null findings: each value with its detector, kind and evidence."""
    columns = (report.get("detection") or {}).get("columns") or {}
    rows = [(c, f) for c, fs in columns.items() for f in fs]
    if not rows:
        return "<p>No disguised nulls were found.</p>"
    head = "".join(f"<th>{h}</th>" for h in ("column", "value", "cells (sample)", "share", "detector", "kind", "evidence"))
    body = "".join(
        f"<tr><td>{html.escape(c)}</td><td><code>{html.escape(f['value'])}</code></td><td class=n>{f['count']}</td>"
        f"<td class=n>{f.get('share', 0):.1%}</td><td>{html.escape(f['detector'])}</td>"
        f"<td class=\"{'bad' if f.get('suspect') else ''}\">{html.escape(f.get('kind', 'missing'))}"
        f"{' (suspect: kept as a value)' if f.get('suspect') else ''}</td><td>{html.escape(f['evidence'])}</td></tr>"
        for c, f in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def column_shares(table: pa.Table | None, report: dict) -> dict[str, dict]:
    """Per column of this run's rows: cells written, replaced as disguised nulls, imputed, not
    applicable; the imputed share against the schema's ``max_imputed_share`` (``over`` when it
    is above), and the findings (value, detector) behind the replacements. Counted on ``table``
    (the run's rows); ``column_shares_of_run`` gives the same from the run's counters."""
    from lakefill.transforms.plan import WRITTEN_COUNTS

    if table is None or table.num_rows == 0 or "_lf_imputed" not in table.column_names:
        return {}
    counts = {label: list_value_counts(table.column(name)) if name in table.column_names else {}
              for label, name in WRITTEN_COUNTS.items()}
    return _column_shares(report, table.num_rows, counts)


def column_shares_of_run(report: dict, options: dict | None = None) -> dict[str, dict]:
    """``column_shares`` from the run's ``written_*`` counters (the finish step's); a report
    without them (a run made before they were counted) is counted on the table's three columns."""
    from lakefill.transforms.plan import WRITTEN_COUNTS

    metrics = report.get("metrics") or {}
    if "written_rows" not in metrics:
        return column_shares(_run_rows(report, options, columns=list(WRITTEN_COUNTS.values())), report)
    counts = {label: {k[len(f"written_{label}:"):]: int(v) for k, v in metrics.items() if k.startswith(f"written_{label}:")}
              for label in WRITTEN_COUNTS}
    return _column_shares(report, int(metrics["written_rows"]), counts)


def _column_shares(report: dict, rows: int, counts: dict[str, dict[str, int]]) -> dict[str, dict]:
    limits = report.get("max_imputed_share") or {}
    findings = (report.get("detection") or {}).get("columns") or {}
    imputed, replaced, na = counts["imputed"], counts["replaced"], counts["not_applicable"]
    out = {}
    for col in sorted(set(imputed) | set(replaced) | set(na)):
        share = imputed.get(col, 0) / rows
        limit = limits.get(col, 0.5)
        out[col] = {"cells": rows, "replaced": replaced.get(col, 0), "imputed": imputed.get(col, 0),
                    "not_applicable": na.get(col, 0), "imputed_share": round(share, 6), "max_imputed_share": limit,
                    "over": share > limit,
                    "found": [{"value": f["value"], "detector": f["detector"], "kind": f.get("kind", "missing")}
                              for f in findings.get(col, []) if not f.get("suspect")]}
    return out


def _shares_table(shares: dict[str, dict]) -> str:
    if not shares:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("column", "cells", "replaced", "imputed", "not applicable",
                                              "imputed share", "allowed", "values (detector)"))
    body = "".join(
        f"<tr><td>{html.escape(c)}</td><td class=n>{v['cells']}</td><td class=n>{v['replaced']}</td>"
        f"<td class=n>{v['imputed']}</td><td class=n>{v['not_applicable']}</td>"
        f"<td class=\"n{' bad' if v['over'] else ''}\">{v['imputed_share']:.1%}</td><td class=n>{v['max_imputed_share']:.0%}</td>"
        f"<td>{html.escape(', '.join(repr(f['value']) + ' (' + f['detector'] + ')' for f in v['found']))}</td></tr>"
        for c, v in shares.items())
    return f"<h2>Cells replaced and imputed per column</h2><table><tr>{head}</tr>{body}</table>"


def _adaptation_rows(a: dict) -> dict:
    """What the job's ``adapt`` did, for the report's table."""
    rows = {"used": "yes: the run used the adapted networks" if a.get("used") else f"no: {a.get('reason', '')}",
            "rows fitted / checked": f"{a.get('rows_fitted', 0)} / {a.get('rows_checked', 0)}"}
    if "check_loss_before" in a:
        rows["check rows' loss before -> after"] = f"{a['check_loss_before']:.4g} -> {a['check_loss_after']:.4g}"
    if a.get("trigger"):
        rows["asked by"] = a["trigger"]
    if a.get("model"):
        rows["new model version"] = a["model"]
    if "seconds" in a:
        rows["seconds"] = a["seconds"]
    return rows


def render_report(run_dir: str | Path, *, options: dict | None = None, report: dict | None = None) -> Path:
    """Write ``report.html`` into ``run_dir`` (a local folder: the run's, or where its Data Docs
    were written) and return its path; report.json is not touched. ``report``: the run's report
    (default: ``run_dir``'s report.json). ``options``: the storage options of the run's table."""
    run_dir = Path(run_dir)
    out = run_dir / "report.html"
    out.write_text(report_page(report or json.loads((run_dir / "report.json").read_text()), run_dir, options=options),
                   encoding="utf-8")
    return out


def report_page(report: dict, run_dir: Path | None, *, options: dict | None = None) -> str:
    """The report page of a run. ``run_dir``: the local folder whose ``data_docs`` it links (None:
    no Data Docs at hand). A report without ``column_shares`` (older runs) has them counted."""
    counts = report.get("counts", {})
    table = _run_rows(report, options, limit=SAMPLE_ROWS)  # the value plots' rows
    shares = report["column_shares"] if "column_shares" in report else column_shares_of_run(report, options)
    check = None
    if table is not None and "_lf_check_before" in table.column_names:  # every re-worked row, two columns
        import pyarrow.dataset as ds

        check = refine_check(_run_rows(report, options, columns=["_lf_check_before", "_lf_check_after"],
                                       where=ds.field("_lf_check_before").is_valid()))
    plots = _plots(report, table, check, of_rows=counts.get("rows_written"))
    check_rows = ({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in check.items() if not k.startswith("_")}
                  if check else {})
    main = {k: counts.get(k) for k in ("rows_in", "rows_written", "rows_quarantined", "cells_imputed", "rows_refined")
            if k in counts}
    status = "committed" if report.get("committed") else "not committed"
    docs = run_dir / "data_docs" if run_dir is not None else None  # linked by a relative path (it moves with the folder)
    index = next(iter(sorted(docs.rglob("index.html"))), None) if docs and docs.exists() else None
    pages = sorted((docs / "validations").rglob("*.html")) if docs and docs.exists() else []
    links = [f'<a href="{html.escape(index.relative_to(run_dir).as_posix())}">GX Data Docs</a>' if index
             else "GX Data Docs: none for this run",
             *(f'<a class="validation" href="{html.escape(p.relative_to(run_dir).as_posix())}">validation: '
               f'{html.escape(p.parent.parent.parent.name if len(p.relative_to(docs).parts) > 3 else p.stem)}</a>'
               for p in pages),
             f"table: <code>{html.escape(str(report.get('table')))}</code>",
             f"quarantine: <code>{html.escape(str(report.get('quarantine')))}</code>"]
    written = counts.get("rows_written") or 0
    sample_note = (f"<p>Values and missingness: the run's first {table.num_rows:,} of {written:,} rows.</p>"
                   if table is not None and 0 < table.num_rows < written else "")
    figures = "".join(f'<figure><img alt="{html.escape(t)}" src="{src}"><figcaption>{html.escape(t)}</figcaption></figure>'
                      for t, src in plots)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lakefill run {html.escape(report['run_id'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: .5rem 1.5rem 1rem 0; display: inline-table; vertical-align: top; }}
td, th {{ border: 1px solid #ccc; padding: .25rem .6rem; }} td.n {{ text-align: right; }}
figure {{ margin: 1rem 0; }} img {{ max-width: 100%; }} .bad {{ color: #b00; }}
</style></head>
<body data-plots="{len(plots)}">
<h1>lakefill run <code>{html.escape(report['run_id'])}</code></h1>
<p>engine <b>{html.escape(str(report.get('engine')))}</b>, input <code>{html.escape(str(report.get('input')))}</code>,
model <code>{html.escape(str(report.get('model')))}</code> &mdash;
<span class="{'' if report.get('committed') else 'bad'}">{status}</span></p>
<p>{' &middot; '.join(links)}</p>
{_suspects_section(report)}
<h2>Counts</h2>
{_table(main, ("", "rows / cells"))}
{_table(counts.get("quarantined_by_reason", {}), ("quarantined by reason", "rows"))}
{_table(counts.get("disguised_nulls_replaced", {}), ("disguised nulls replaced", "cells"))}
{_table({c: v["not_applicable"] for c, v in shares.items() if v["not_applicable"]}, ("not applicable (never imputed)", "cells"))}
{_shares_table(shares)}
{_drift_table(report)}
<h2>Disguised nulls found</h2>
{_findings_table(report)}
{_table(check_rows, ("reverse training check (held-back cells)", "")) if check_rows else ""}
{_table(_adaptation_rows(report.get("adaptation")), ("adaptation (the job's adapt)", "")) if report.get("adaptation") else ""}
<h2>Plots</h2>
{sample_note}{figures or "<p>No rows were written, so there is nothing to plot.</p>"}
<h2>Timings (s)</h2>
{_table(report.get("timings_seconds", {}), ("step", "seconds"))}
<script>
window.lakefillErrors = [];
window.addEventListener("error", e => window.lakefillErrors.push(String(e.message || e)), true);
window.addEventListener("load", () => {{
  const imgs = Array.from(document.images);
  document.body.dataset.plotsShown = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.errors = window.lakefillErrors.length;
}});
</script>
</body></html>
"""
    return page
