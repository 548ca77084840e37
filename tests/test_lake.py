import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lakefill.transforms.lake import commit, read_lake, write_part


def _t(ids, part=None):
    cols = {"id": pa.array(ids, pa.int64()), "v": pa.array([float(i) for i in ids])}
    if part is not None:
        cols["p"] = pa.array([part] * len(ids))
    return pa.table(cols)


def test_one_commit_per_run_id(tmp_path):
    uri = tmp_path / "t"
    a1 = write_part(_t([1, 2]), uri) + write_part(_t([3]), uri)  # two workers' files
    r = commit(uri, a1, _t([1]).schema, run_id="run-1", mode="append")
    assert r.committed and r.files == 2 and r.rows == 3
    assert sorted(read_lake(uri).column("id").to_pylist()) == [1, 2, 3]
    version = DeltaTable(str(uri)).version()
    again = commit(uri, write_part(_t([1, 2, 3]), uri), _t([1]).schema, run_id="run-1", mode="append")
    assert not again.committed
    assert DeltaTable(str(uri)).version() == version
    assert sorted(read_lake(uri).column("id").to_pylist()) == [1, 2, 3]
    commit(uri, write_part(_t([4]), uri), _t([1]).schema, run_id="run-2", mode="append")
    assert sorted(read_lake(uri).column("id").to_pylist()) == [1, 2, 3, 4]
    assert DeltaTable(str(uri)).transaction_version("lakefill:run-2") == 1


def test_error_mode_refuses_to_clobber(tmp_path):
    uri = tmp_path / "t"
    commit(uri, write_part(_t([1]), uri), _t([1]).schema, run_id="a")
    with pytest.raises(FileExistsError, match="already exists"):
        commit(uri, write_part(_t([2]), uri), _t([1]).schema, run_id="b", mode="error")


def test_overwrite_and_partition_overwrite(tmp_path):
    uri = tmp_path / "t"
    schema = _t([1], "x").schema
    commit(uri, write_part(pa.concat_tables([_t([1], "x"), _t([2], "y")]), uri, partition_by=["p"]), schema,
           run_id="a", partition_by=["p"])
    commit(uri, write_part(_t([10], "x"), uri, partition_by=["p"]), schema, run_id="b",
           mode="overwrite_partitions", partition_by=["p"])
    rows = sorted((r["p"], r["id"]) for r in read_lake(uri).to_pylist())
    assert rows == [("x", 10), ("y", 2)]
    commit(uri, write_part(_t([7], "z"), uri, partition_by=["p"]), schema, run_id="c", mode="overwrite", partition_by=["p"])
    assert [(r["p"], r["id"]) for r in read_lake(uri).to_pylist()] == [("z", 7)]
