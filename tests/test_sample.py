"""The training sample: at most k rows, uniform over the whole input, the same rows whatever
the split, the file format or the engine, drawn without holding the input."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from lakefill.pipelines.cli import main
from lakefill.transforms.io import ROW_ID
from lakefill.transforms.sample import BottomK, read_sample, row_keys


def _rows(n: int) -> pa.Table:
    ids = np.arange(n, dtype=np.int64)
    return pa.table({ROW_ID: ids, "a": [str(i) for i in ids]})


def test_the_sample_is_the_same_rows_whatever_the_split_and_order():
    table = _rows(50_000)
    whole = BottomK(700, seed=3).add(table)
    parts = [BottomK(700, seed=3) for _ in range(4)]
    order = np.random.default_rng(0).permutation(table.num_rows)
    for k, idx in enumerate(np.array_split(order, 4)):
        for piece in np.array_split(idx, 9):
            parts[k].add(table.take(pa.array(piece)))
    merged = parts[0]
    for p in parts[1:]:
        merged.merge(p)
    assert merged.table().equals(whole.table())
    assert merged.info().to_dict() == {"train_rows": 700, "rows": 700, "input_rows": 50_000, "unreadable_rows": 0,
                                       "seed": 3}
    keys = row_keys(table.column(ROW_ID).to_numpy(), 3)
    assert set(whole.table().column(ROW_ID).to_pylist()) == set(np.argsort(keys)[:700].tolist())  # the bottom 700
    other = BottomK(700, seed=4).add(table).table().column(ROW_ID).to_pylist()
    assert other != whole.table().column(ROW_ID).to_pylist()  # another seed, another sample


def test_the_sample_is_uniform_and_never_holds_much_more_than_k_rows():
    sample, held = BottomK(2_000, seed=0), []
    table = _rows(200_000)
    for start in range(0, table.num_rows, 5_000):
        sample.add(table.slice(start, 5_000))
        held.append(sample._held)
    assert max(held) < 2 * 2_000 + 5_000
    ids = sample.table().column(ROW_ID).to_numpy()
    # uniform over the input: each tenth of the rows gives about a tenth of the sample
    counts = np.bincount(ids // 20_000, minlength=10)
    assert counts.sum() == 2_000 and counts.min() > 140 and counts.max() < 260
    assert BottomK(10, seed=0).add(_rows(7)).table().num_rows == 7  # a smaller input: every row
    with pytest.raises(ValueError, match="at least one row"):
        BottomK(0)


def test_csv_and_parquet_of_one_table_give_one_sample(tmp_path):
    rng = np.random.default_rng(0)
    table = pa.table({"x": rng.normal(size=3_000), "y": rng.integers(0, 9, 3_000)})
    pacsv.write_csv(table, tmp_path / "t.csv")
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=250)
    a, info = read_sample(tmp_path / "t.csv", train_rows=500, seed=1, batch_rows=700)
    b, _ = read_sample(tmp_path / "t.parquet", train_rows=500, seed=1, batch_rows=300)
    assert a.table.column(ROW_ID).equals(b.table.column(ROW_ID)) and a.table.num_rows == 500
    assert [float(v) for v in a.table.column("x").to_pylist()] == [float(v) for v in b.table.column("x").to_pylist()]
    assert (info.rows, info.input_rows, info.seed) == (500, 3_000, 1)


def test_lakefill_train_fits_on_the_sample_and_records_it(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.normal(size=2_000)
    table = pa.table({"x": x, "y": 2 * x + rng.normal(0, 0.1, 2_000), "c": np.where(x > 0, "a", "b")})
    pacsv.write_csv(table, tmp_path / "in.csv")
    assert main(["train", "--input", str(tmp_path / "in.csv"), "--out", str(tmp_path / "m"), "--train-rows", "300",
                 "--epochs", "3", "--hidden", "8", "--depth", "1", "--code", "2", "--no-gaussian", "--no-donors",
                 "--no-trees", "--no-chained", "--seed", "5"]) == 0
    assert "training sample: 300 of 2,000 rows (seed 5)" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["metrics"]["training_sample"] == {"train_rows": 300, "rows": 300, "input_rows": 2_000,
                                                      "unreadable_rows": 0, "seed": 5}
    assert manifest["metrics"]["rows"] == 300
