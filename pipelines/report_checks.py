"""Why a run's report fails an orchestrator's check: the one rule, for ``lakefill report --check``
and for the Airflow DAG's ``check_report`` task.

Standard library only: Airflow's own environment has no lakefill, so the DAG imports this very
file (``deploy/airflow/dags/lakefill_entry/report_checks.py`` is a link to it).
"""

from __future__ import annotations


def report_problems(report: dict) -> list[str]:
    """Why ``report`` (a run's report.json, as a dict) should fail the check; empty: it passes."""
    c, problems = report.get("counts", {}), []
    if c.get("rows_in") != c.get("rows_written", 0) + c.get("rows_quarantined", 0):
        problems.append(f"rows_in {c.get('rows_in')} != rows_written {c.get('rows_written')} + rows_quarantined "
                        f"{c.get('rows_quarantined')}")
    limit = (report.get("config") or {}).get("max_quarantine_share")
    share = c.get("rows_quarantined", 0) / max(c.get("rows_in") or 1, 1)
    if limit is not None and share > limit:
        problems.append(f"quarantined share {share:.1%} is over max_quarantine_share {limit:.1%}")
    if not report.get("committed") and not report.get("already_committed"):
        problems.append("the run committed nothing to the table")
    for col, v in (report.get("column_shares") or {}).items():
        if v.get("over"):
            found = ", ".join(f"{f['value']!r} ({f['detector']})" for f in v.get("found", [])) or "real nulls only"
            problems.append(f"column {col!r}: {v['imputed']} of {v['cells']} written cells ({v['imputed_share']:.0%}) were "
                            f"imputed, over its max_imputed_share of {v['max_imputed_share']:.0%} (replaced values: "
                            f"{found}); if that is intended, raise max_imputed_share for the column in the schema")
    for col, d in (report.get("drift") or {}).items():
        if d.get("drifted"):
            problems.append(f"column {col!r} drifted from the model's training rows: {d['measure']} {d['distance']:.3f} over "
                            f"its threshold {d['threshold']:.3f}; retrain the model on recent rows, or raise the column's "
                            f"drift_threshold in the schema if the change is expected")
    return problems
