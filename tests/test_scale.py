"""Protocol F in small: a generated input through `lakefill train` on a sample, measured."""

import json

from benchmarks import scale

from conftest import ROOT


def test_the_scale_benchmark_trains_on_a_sample_and_measures_it(tmp_path, capsys):
    out = tmp_path / "scale.json"
    assert scale.main(["--data", str(ROOT / "tests" / "data" / "tabular" / "letter.csv"), "--sizes", "1500",
                       "--formats", "csv,parquet", "--paths", "train", "--train-rows", "400", "--work", str(tmp_path),
                       "--train-args=--epochs 3 --hidden 8 --depth 1 --code 2 --no-gaussian --no-trees --no-chained --no-donors",
                       "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(r["format"], r["sample_rows"], r["input_rows"]) for r in result["runs"]] == [("csv", 400, 1500),
                                                                                         ("parquet", 400, 1500)]
    for r in result["runs"]:
        assert r["sampling_seconds"] is not None and r["fit_seconds"] > 0 and r["launcher_peak_mb"] > 0
    assert "letter-1500.csv" in capsys.readouterr().out
