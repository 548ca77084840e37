"""Protocol A (`lakefill evaluate`): the command, its JSON keys, and scores that mean what they say."""

import json
import mmap

import numpy as np
import pytest

from lakefill.pipelines.cli import main
from benchmarks import posterior_bound
from lakefill.pipelines.evaluate import Problem, confidence_quality, evaluate, load_problem

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
    assert {"confidence_spearman", "confidence_spearman_if_calibrated", "least_confident_20pct_error_share_if_calibrated",
            "confidence_spearman_by_expected_errors", "calibration_numeric", "calibration_categorical"} <= set(lf)
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


def _evaluate_small(tmp_path, *flags) -> dict:
    """Protocol A on a 300-row table, seed 0, the tiny network; the JSON it wrote."""
    data, out = _table(tmp_path / "t.csv", n=300), tmp_path / "a.json"
    assert main(["evaluate", "--data", str(data), "--seeds", "0", *flags, "--ae-config", json.dumps(TINY),
                 "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_evaluate_fits_on_the_training_sample_and_fills_the_whole_table(tmp_path):
    result = _evaluate_small(tmp_path, "--methods", "lakefill", "--train-rows", "100")
    assert result["train_rows"] == 100 and result["rows"] == 300
    assert result["results"]["lakefill"]["rmse"] is not None  # every hidden cell of the 300 rows scored


def test_evaluate_fills_in_both_precisions_from_one_fit(tmp_path, capsys):
    result = _evaluate_small(tmp_path, "--methods", "lakefill,mean", "--precision", "fp32,bf16")
    data = tmp_path / "t.csv"
    assert set(result["results"]) == {"lakefill", "lakefill@bf16", "mean"} and result["precision"] == "fp32"
    fp32, bf16 = result["results"]["lakefill"], result["results"]["lakefill@bf16"]
    assert fp32["fit_seconds"] == bf16["fit_seconds"]  # one fit, filled twice
    assert fp32["rmse"] != bf16["rmse"] and abs(fp32["rmse"] - bf16["rmse"]) < 0.05 * fp32["rmse"]
    assert main(["evaluate", "--data", str(data), "--methods", "mean", "--precision", "fp16"]) == 2
    assert "--precision must be fp32, bf16 or both" in capsys.readouterr().err


def _errors_problem(n=4000, seed=0):
    """Cells whose predicted errors are known: 1 numeric and 3 categorical columns, 30% hidden."""
    rng = np.random.default_rng(seed)
    expected = np.concatenate([rng.uniform(0.001, 0.05, (n, 1)), rng.uniform(0.0, 0.9, (n, 3))], 1)
    mask = rng.random((n, 4)) < 0.3
    sq = expected[:, :1] * rng.chisquare(1, (n, 1))  # the errors the predictions promise
    wrong = rng.random((n, 3)) < expected[:, 1:]
    C = [np.zeros(n, dtype=object) for _ in range(3)]
    Chat = [np.where(wrong[:, k], 1, 0).astype(object) for k in range(3)]
    problem = Problem("t", ["x"], ["a", "b", "c"], np.zeros((n, 1)), C, None, None)
    n_h = np.maximum(mask.sum(1), 1)
    confidence = 1 - (expected * mask).sum(1) / n_h
    return problem, mask, sq, Chat, expected, confidence


def test_the_confidence_ceiling_tells_a_calibrated_model_from_an_overconfident_one():
    problem, mask, sq, Chat, expected, confidence = _errors_problem()
    q = confidence_quality(problem, mask, sq, confidence, Chat, expected, seed=0)
    # errors drawn as predicted: the confidence reaches its ceiling and the ratios are near 1
    assert q["confidence_spearman"] > 0.3
    assert abs(q["confidence_spearman"] - q["confidence_spearman_if_calibrated"]) < 0.04
    assert abs(q["least_confident_20pct_error_share"] - q["least_confident_20pct_error_share_if_calibrated"]) < 0.04
    assert 0.9 < q["calibration_numeric"] < 1.1 and 0.9 < q["calibration_categorical"] < 1.1
    # a model that promises half the error it makes: found by the ratios
    q2 = confidence_quality(problem, mask, sq, confidence, Chat, expected / 2, seed=0)
    assert 1.8 < q2["calibration_numeric"] < 2.2 and 1.8 < q2["calibration_categorical"] < 2.2
    assert q2["confidence_spearman"] == q["confidence_spearman"]  # the true figures do not use the predictions
    # a confidence that knows nothing about the errors: no correlation, and no ceiling either
    noise = np.random.default_rng(1).random(len(confidence))
    q3 = confidence_quality(problem, mask, sq, noise, Chat, expected, seed=0)
    assert abs(q3["confidence_spearman"]) < 0.1 and abs(q3["confidence_spearman_if_calibrated"]) < 0.1
    assert q3["least_confident_20pct_error_share"] < q["least_confident_20pct_error_share"]


def _factorial(path):
    """Every combination of three attributes once; the class is a function of two of them."""
    lines = ["a,b,c,cls"]
    for a in ("x", "y", "z", "w"):
        for b in ("p", "q", "r"):
            for c in ("u", "v"):
                lines.append(f"{a},{b},{c},{'good' if a in ('x', 'y') and b != 'r' else 'bad'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_posterior_bound_knows_the_class_and_not_the_free_attribute(tmp_path):
    problem = load_problem(_factorial(tmp_path / "f.csv"), None)
    assert problem.cat_cols == ["a", "b", "c", "cls"] and not problem.num_cols
    n = problem.table.num_rows
    mask = np.zeros((n, 4), dtype=bool)
    mask[:, 3] = True  # the class hidden, every attribute seen: one candidate row, always right
    mask[:12, 2] = True  # c hidden too on some rows: c is free (2 values, half the rows each)
    wrong, expected, candidates = posterior_bound.posterior(problem.C, mask)
    assert not wrong[12:, 3].any() and (expected[12:, 3] == 0).all() and (candidates[12:, 3] == 1).all()
    assert (expected[:12, 2] == 0.5).all() and (candidates[:12, 2] == 2).all()  # c: a coin, whatever else is seen
    assert (expected[:12, 3] == 0).all()  # the class does not depend on c: still known
    assert (wrong[~mask] == 0).all() and (expected[~mask] == 0).all()


def test_the_posterior_bound_command(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert posterior_bound.main(["--data", str(_factorial(tmp_path / "f.csv")), "--seeds", "0,1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    p = result["posterior"]
    assert result["seeds"] == [0, 1] and len(result["per_seed"]) == 2 and 0 < p["accuracy"] <= 1
    assert {"confidence_spearman", "least_confident_20pct_error_share", "ranked_by_expected_errors", "informative"} <= set(p)
    assert "exact posterior" in capsys.readouterr().out
    numeric = _table(tmp_path / "t.csv", n=100)
    assert posterior_bound.main(["--data", str(numeric)]) == 2
    assert "t.csv" in capsys.readouterr().err


def test_missforest_keeps_one_forest_and_fills_as_fit_then_transform_did(tmp_path, capsys):
    """The baseline's forests are dropped once they have predicted: the same fill as
    IterativeImputer's fit + transform keeping every forest; each method's peak memory printed."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    from lakefill.pipelines.evaluate import _design, make_mask, run_baseline

    problem = load_problem(_table(tmp_path / "t.csv", n=200), None)
    mask = make_mask(problem, rate=0.2, mechanism="mcar", seed=0)
    Xhat, Chat, fit_s, imp_s = run_baseline("missforest", problem, mask, 0)
    Z, lo, span, _ = _design(problem, mask, False)
    kept = IterativeImputer(estimator=RandomForestRegressor(n_estimators=100, max_features="sqrt", n_jobs=-1, random_state=0),
                            max_iter=10, random_state=0, initial_strategy="mean").fit(Z)
    assert all(len(step.estimator.estimators_) == 100 for step in kept.imputation_sequence_)
    Zh = kept.transform(Z)
    d = len(problem.num_cols)
    assert np.allclose(Xhat, Zh[:, :d] * span + lo, atol=1e-9) and imp_s == 0.0
    out = tmp_path / "a.json"
    assert main(["evaluate", "--data", str(tmp_path / "t.csv"), "--seeds", "0", "--methods", "mean,missforest",
                 "--json", str(out)]) == 0
    assert "peak MB" in capsys.readouterr().out
    result = json.loads(out.read_text())["results"]
    assert all(r["peak_mb"] is not None and r["peak_mb"] >= 0 for r in result.values())


def test_peak_memory_sees_what_a_block_allocates():
    from lakefill.pipelines.evaluate import PeakMemory

    with PeakMemory() as small:
        np.ones(1000).sum()
    with PeakMemory() as big:  # 200 MiB of fresh pages (mapped: not heap that glibc may have kept from earlier work)
        block = mmap.mmap(-1, 200 * 2**20)
        block.write(b"\1" * (200 * 2**20))
    block.close()  # freed after the block: its peak is seen whatever the polling caught
    assert big.mb > 150 and small.mb < 50
