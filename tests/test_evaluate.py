"""Protocol A (`lakefill evaluate`): the command, its JSON keys, and scores that mean what they say."""

import json

import numpy as np
import pytest

from lakefill.pipelines.cli import main
from lakefill.pipelines.evaluate import evaluate, load_problem

TINY = {"hidden": 32, "depth": 1, "code": 8, "epochs": 40, "min_steps": 0, "extra_sizes": [], "donors": False,
        "trees": False}


def _table(path, n=600):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, n)
    lines = ["x,y,kind,flag,exact"]
    for v in x:  # every column follows x: a model that reads x fills the others well
        lines.append(f"{v:.4f},{2 * v + rng.normal(0, 0.05):.4f},{'high' if v > 0 else 'low'},{'true' if v > 0.3 else 'false'},"
                     f"{10 + v:.16f}")  # more digits than a float keeps: a decimal column
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_evaluate_scores_booleans_and_categories_against_the_complete_table(tmp_path):
    data = _table(tmp_path / "t.csv")
    problem = load_problem(data, None)
    assert problem.num_cols == ["x", "y", "exact"] and problem.cat_cols == ["kind", "flag"]  # a decimal is scored
    assert problem.schema.column("exact").type == "decimal"
    assert set(problem.C[1]) == {"true", "false"}  # a boolean scores as the codec names it
    out = evaluate(data=data, schema=None, missing_rate=0.2, mechanism="mcar", seeds=[0, 1],
                   methods=["lakefill", "lakefill-adapt", "mean", "knn"], log=lambda *_: None, ae_config=TINY)
    assert out["dataset"] == "t" and out["rows"] == 600 and out["columns"] == 5 and out["seeds"] == [0, 1]
    for method, r in out["results"].items():
        assert {"rmse", "rmse_std", "accuracy", "accuracy_std", "fit_seconds", "impute_seconds"} <= set(r), method
    lf, mean = out["results"]["lakefill"], out["results"]["mean"]
    # the categories follow x, so a fill that reads x is right on nearly every hidden cell (a
    # boolean scored as the wrong text scored 0 on its column)
    assert lf["accuracy"] > 0.85 > mean["accuracy"]
    assert lf["rmse"] < mean["rmse"]
    assert lf["rmse_std"] >= 0 and lf["fit_seconds"] > 0
    # the side stage with adaptation shares the fit; a row keeps only what its held-back cells approve
    ad = out["results"]["lakefill-adapt"]
    assert ad["fit_seconds"] == lf["fit_seconds"] and ad["rmse"] < mean["rmse"] and ad["accuracy"] > 0.85


@pytest.mark.slow
def test_evaluate_command_writes_the_protocol_json(tmp_path, capsys):
    data = _table(tmp_path / "t.csv", n=200)
    out = tmp_path / "a.json"
    assert main(["evaluate", "--data", str(data), "--missing-rate", "0.2", "--mechanism", "mar", "--seeds", "0",
                 "--methods", "mean,knn", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["mechanism"] == "mar" and result["missing_rate"] == 0.2 and set(result["results"]) == {"mean", "knn"}
    assert "knn" in capsys.readouterr().out
    assert main(["evaluate", "--data", str(data), "--methods", "mean,gain"]) == 2
    assert "gain" in capsys.readouterr().err
