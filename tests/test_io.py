import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write
from lakefill.errors import InputError
from lakefill._arrow import as_text
from lakefill.transforms.io import ROW_ID, read_raw, iter_raw, read_parquet_row_group
from lakefill.transforms.reads import ReadUnit, UnitKind, parquet_read_units, parquet_row_groups, plan_reads


def test_reads_csv_as_strings_with_row_ids(tmp_path):
    p = write(tmp_path / "t.csv", "\ufeffa,b\n1,x\n2,y\n")
    r = read_raw(p)
    assert r.table.column_names == ["a", "b", ROW_ID]  # the BOM is not part of the first name
    assert r.table.column("a").to_pylist() == ["1", "2"]
    assert r.table.column(ROW_ID).to_pylist() == [0, 1]
    assert r.rows_in == 2


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(InputError, match="not found: .*nope.csv"):
        read_raw(tmp_path / "nope.csv")


def test_empty_file(tmp_path):
    with pytest.raises(InputError, match="empty"):
        read_raw(write(tmp_path / "e.csv", ""))


def test_header_only(tmp_path):
    with pytest.raises(InputError, match="header .* but no data rows"):
        read_raw(write(tmp_path / "h.csv", "a,b,c\n"))


def test_duplicate_column_names(tmp_path):
    with pytest.raises(InputError, match=r"duplicate column names \['a'\]"):
        read_raw(write(tmp_path / "d.csv", "a,b,a\n1,2,3\n"))


def test_ragged_rows_go_to_quarantine_with_line_numbers(tmp_path):
    r = read_raw(write(tmp_path / "r.csv", "a,b,c\n1,2,3\n4,5\n6,7,8,9\n10,11,12\n"))
    assert r.table.column("a").to_pylist() == ["1", "10"]
    assert [q.row_id for q in r.quarantined] == [1, 2]
    assert "line 3: ragged row: expected 3 fields, got 2" in r.quarantined[0].reason
    assert json.loads(r.quarantined[0].record)["text"] == "4,5"
    assert r.rows_in == 4  # nothing lost


def test_bad_encoding_bytes_quarantine_the_row_and_name_the_column(tmp_path):
    r = read_raw(write(tmp_path / "b.csv", b"a,b\n1,ok\n2,caf\xe9\n"))
    assert r.table.num_rows == 1
    assert "column 'b'" in r.quarantined[0].reason and "UTF-8" in r.quarantined[0].reason


def test_huge_cells_are_quarantined(tmp_path):
    r = read_raw(write(tmp_path / "big.csv", "a,b\n1," + "x" * 5000 + "\n2,y\n"), max_cell_chars=1000)
    assert r.table.column("a").to_pylist() == ["2"]
    assert "5000 characters is over the limit of 1000" in r.quarantined[0].reason


def test_reserved_prefix_refused(tmp_path):
    with pytest.raises(InputError, match="_lf_"):
        read_raw(write(tmp_path / "p.csv", "_lf_x,b\n1,2\n"))


def test_parquet_and_jsonl(tmp_path):
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", None]}), tmp_path / "t.parquet")
    r = read_raw(tmp_path / "t.parquet")
    # numbers stay numbers (their text on demand, as_text); other columns are read as text
    assert r.table.column("a").to_pylist() == [1, 2] and r.table.column("b").to_pylist() == ["x", None]
    assert as_text(r.table).column("a").to_pylist() == ["1", "2"]
    r = read_raw(write(tmp_path / "t.jsonl", '{"a": 1, "b": "x"}\nnot json\n{"a": 3, "b": null}\n'))
    assert r.table.column("a").to_pylist() == ["1", "3"]
    assert r.quarantined[0].row_id == 1 and "not a JSON object" in r.quarantined[0].reason


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_chunked_reading_matches_the_whole_read(tmp_path, fmt):
    lines = ["a,b"] + [f"{i},x{i}" for i in range(23)]
    lines[8] = "7,x7,extra"  # ragged (csv)
    path = write(tmp_path / "t.csv", "\n".join(lines) + "\n")
    if fmt == "parquet":
        table = pa.table({"a": list(range(23)), "b": [f"x{i}" for i in range(23)]})
        path = tmp_path / "t.parquet"
        pq.write_table(table, path, row_group_size=5)
        assert parquet_row_groups(path) == [(0, 0), (1, 5), (2, 10), (3, 15), (4, 20)]
        rg = read_parquet_row_group(path, 2, 10)
        assert rg.table.column(ROW_ID).to_pylist() == list(range(10, 15)) and rg.table.column("a").to_pylist()[0] == 10
        # read units: consecutive row groups up to the batch size, one group when it is larger
        assert parquet_read_units(path, 10) == [(0, 2, 0), (2, 2, 10), (4, 1, 20)]
        assert parquet_read_units(path, 12) == [(0, 2, 0), (2, 2, 10), (4, 1, 20)]
        assert parquet_read_units(path, 3) == [(i, 1, 5 * i) for i in range(5)]
        assert parquet_read_units(path, 100) == [(0, 5, 0)]
        # an engine with several task slots asks for at least that many units: smaller ones, whole row groups
        groups = UnitKind.ROW_GROUPS
        assert plan_reads(str(path), 100) == [ReadUnit(str(path), groups, 0, row_group=0, row_groups=5)]
        assert plan_reads(str(path), 100, min_units=2) == [ReadUnit(str(path), groups, f, row_group=i, row_groups=n)
                                                           for i, n, f in [(0, 2, 0), (2, 2, 10), (4, 1, 20)]]
        assert plan_reads(str(path), 100, min_units=4) == [ReadUnit(str(path), groups, 5 * i, row_group=i, row_groups=1)
                                                           for i in range(5)]
        assert ReadUnit.spark_ddl() == ("path string, kind string, first_row long, row_group long, row_groups long, "
                                        "start long, end long, first_line long")
        assert ReadUnit.from_dict(plan_reads(str(path), 100)[0].to_dict()) == plan_reads(str(path), 100)[0]
        assert plan_reads(str(path), 10, min_units=2) == plan_reads(str(path), 10)  # already enough
        units = [read_parquet_row_group(path, i, first, n).table for i, n, first in parquet_read_units(path, 10)]
        assert [u.num_rows for u in units] == [10, 10, 3]
        assert pa.concat_tables(units).equals(read_raw(path).table)
    elif fmt == "jsonl":
        path = tmp_path / "t.jsonl"
        path.write_text("\n".join(['{"a": 1, "b": "x"}'] * 10 + ["not json"] + ['{"a": 2, "b": "y"}'] * 12) + "\n")
    whole = read_raw(path)
    chunks = list(iter_raw(path, batch_rows=4))
    assert len(chunks) > 3
    assert pa.concat_tables([c.table for c in chunks]).equals(whole.table)
    assert [q.row_id for c in chunks for q in c.quarantined] == [q.row_id for q in whole.quarantined]
    assert sum(c.rows_in for c in chunks) == whole.rows_in == 23


def test_a_parquet_number_column_is_detected_and_parsed_as_its_text(tmp_path):
    """Parquet integer and float64 columns stay numbers through the reader; detection, schema
    inference and parsing give exactly what they give on the same columns' text."""
    import numpy as np

    from lakefill.schema import infer_schema
    from lakefill.transforms.detect import NullPolicy
    from lakefill.transforms.io import RawRead
    from lakefill.transforms.parse import detect_and_parse

    rng = np.random.default_rng(0)
    n = 3000
    age = rng.integers(18, 90, n).astype(object)
    age[rng.random(n) < 0.08] = -1  # a sentinel: the lone negative of a non-negative column
    age[rng.random(n) < 0.05] = None
    weight = rng.normal(70, 12, n)
    weight[rng.random(n) < 0.05] = np.nan  # the text "nan": a null token
    weight[rng.random(n) < 0.04] = 99999.0
    big = (2**62 + rng.integers(0, 1000, n)).astype(object)  # above 2^53: as the text would parse
    flag = rng.integers(0, 2, n).astype(object)
    flag[7] = 5  # not a boolean: its row goes to quarantine
    table = pa.table({"age": pa.array(age, pa.int64()), "weight": pa.array(weight, pa.float64()),
                      "big": pa.array(big, pa.int64()), "flag": pa.array(flag, pa.int64()),
                      "small": pa.array(rng.normal(0, 1, n), pa.float32()),
                      "name": pa.array([f"n{i % 50}" for i in range(n)])})
    pq.write_table(table, tmp_path / "t.parquet")
    raw = read_raw(tmp_path / "t.parquet")
    types = {f.name: f.type for f in raw.table.schema}
    assert types["age"] == pa.int64() and types["weight"] == pa.float64() and types["small"] == pa.string()
    text = RawRead(raw.path, as_text(raw.table), raw.quarantined)
    assert all(pa.types.is_string(f.type) for f in text.table.schema if f.name != "_lf_row_id")
    policy = NullPolicy().fit(raw.table)
    assert policy.to_dict() == NullPolicy().fit(text.table).to_dict()
    assert policy.null_values("age") == {"-1"} and "99999" in policy.null_values("weight")
    schema = infer_schema(raw.table, name="t", policy=policy)
    assert schema == infer_schema(text.table, name="t", policy=policy)
    for types in ({}, {"flag": "boolean", "weight": "numeric", "big": "integer", "age": "numeric"},
                  {"weight": "text", "big": "numeric", "age": "categorical"}):
        typed = schema.model_copy(update={"columns": [c.model_copy(update={"type": types.get(c.name, c.type)})
                                                      for c in schema.columns]})
        a, b = detect_and_parse(raw, typed), detect_and_parse(text, typed)
        assert a.table.equals(b.table) and a.disguised == b.disguised and a.disguised["age"] > 0, types
        assert [q.__dict__ for q in a.quarantined] == [q.__dict__ for q in b.quarantined], types
        if types.get("flag") == "boolean":  # not a boolean: its row goes to quarantine, as its text
            assert len(a.quarantined) == 1 and '"flag": "5"' in a.quarantined[0].record
            assert "is not a boolean" in a.quarantined[0].reason


def test_the_first_rows_of_a_parquet_file_are_read_without_decoding_the_rest(tmp_path, monkeypatch):
    """read_raw(limit=N) asks Parquet for batches of at most N rows: only the row groups holding
    the first N rows are decoded (a launcher's sample of a 10^7-row file took 3.5 GB before)."""
    table = pa.table({"a": list(range(1000))})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=100)
    sizes = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        sizes.append(kwargs.get("batch_size"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    head = read_raw(path, limit=150)
    assert head.table.column("a").to_pylist() == list(range(150))  # typed numbers stay typed
    assert sizes == [150]
