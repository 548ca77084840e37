"""Protocol E (benchmarks/drift.py): the split rule, the JSON keys, the side stage's bookkeeping."""

import json

import numpy as np
import pytest

from benchmarks.drift import main, split
from lakefill.pipelines.evaluate import load_problem

TINY = {"hidden": 16, "depth": 1, "code": 4, "epochs": 20, "min_steps": 0, "extra_sizes": [], "donors": False,
        "trees": False, "gaussian": False}


def _table(path, n=400):
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 10, n)
    lines = ["a,b,kind"]
    for v in a:  # b follows a with a bend at the median: the upper half differs from the lower
        b = v if v < 5 else 10 - 2 * (v - 5)
        lines.append(f"{v:.3f},{b + rng.normal(0, 0.1):.3f},{'x' if v < 7 else 'y'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_split_trains_on_the_first_columns_lower_half(tmp_path):
    problem = load_problem(_table(tmp_path / "t.csv"), None)
    train, test, column = split(problem)
    assert column == "a" and len(train) == len(test) == 200 and not set(train) & set(test)
    a = problem.X[:, problem.num_cols.index("a")]
    assert a[train].max() <= a[test].min()


@pytest.mark.slow
def test_protocol_e_writes_its_json_and_scores_the_routed_rows(tmp_path, capsys):
    data, out = _table(tmp_path / "t.csv"), tmp_path / "e.json"
    assert main(["--data", str(data), "--seeds", "0", "--threshold", "0.9", "--ae-config", json.dumps(TINY),
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["protocol"] == "E" and result["dataset"] == "t" and result["threshold"] == 0.9
    run = result["runs"][0]
    assert run["split"] == {"column": "a", "rule": "first scored column, lower half trains", "train_rows": 200,
                            "impute_rows": 200}
    assert 0 < run["routed_share"] <= 1
    routed = run["routed"]["direct"]["rows"]
    assert routed > 0 and all(run["routed"][side]["rows"] == routed for side in ("reverse", "adapt", "side"))
    assert all(0 <= run["rows_kept_refined"][side] <= routed for side in ("reverse", "adapt", "side"))
    assert set(run["adapt"]) >= {"used", "rows_fitted", "rows_checked", "config"}
    for key in ("rmse", "accuracy"):
        assert set(result[key]) == {"direct", "routed_direct", "routed_reverse", "routed_adapt", "routed_side",
                                    "all_rows_reverse", "all_rows_adapt", "all_rows_with_side", "all_rows_adapted_direct",
                                    "all_rows_default"}
        assert all(v is not None for v in result[key].values())
    # the default stage (on_drift: adapt_all): the split column drifted, so the adapted networks fill every row
    # when the adaptation was accepted, else the side stage does
    default = run["default_stage"]
    assert "a" in default["drifted"]
    expected = run["all_rows_adapted_direct"] if run["adapt"]["used"] else run["all_rows_with_side"]["side"]
    assert default["all_rows"] == expected and result["rmse"]["all_rows_default"] == expected["rmse"]
    for side in ("reverse", "adapt", "side"):  # nothing kept: the rows are the direct fill's
        if run["rows_kept_refined"][side] == 0:
            assert result["rmse"][f"routed_{side}"] == result["rmse"]["routed_direct"]
    assert "routed" in capsys.readouterr().out
    for bad in (["--data", str(tmp_path / "none.csv")], ["--data", str(data), "--threshold", "0"],
                ["--data", str(data), "--seeds", "a,b"]):
        with pytest.raises(SystemExit) as exit_:
            main(bad)
        assert exit_.value.code == 2


@pytest.mark.slow
def test_protocol_e_on_digits_trains_on_0_to_4_and_fills_5_to_9(tmp_path):
    rng = np.random.default_rng(0)
    digits = np.arange(300) % 10
    # each digit a bar pattern of its own: the upper digits' bars sit where the lower ones' do not
    images = np.zeros((300, 6, 6), np.uint8)
    for i, d in enumerate(digits):
        images[i, :, d % 6] = 255
        images[i, d // 2 % 6, :] = 200
    images = np.clip(images + rng.integers(0, 30, images.shape), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "m.npz", x_test=images, y_test=digits)
    out = tmp_path / "e.json"
    assert main(["--mnist", str(tmp_path / "m.npz"), "--epochs", "2", "--threshold", "0.9", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    run = result["runs"][0]
    assert result["dataset"] == "mnist_digits" and run["split"]["train_rows"] == run["split"]["impute_rows"] == 150
    assert run["direct"]["rmse"] is None and 0 <= run["direct"]["accuracy"] <= 1
    assert all(run["routed"][side]["rows"] == run["routed"]["direct"]["rows"] for side in ("reverse", "adapt", "side"))
    assert run["adapt"]["rows_offered"] == 150
    with pytest.raises(SystemExit):
        main(["--mnist", str(tmp_path / "m.npz"), "--data", str(tmp_path / "t.csv")])
