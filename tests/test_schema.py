import pyarrow as pa
import pytest

from conftest import write
from lakefill.errors import SchemaError
from lakefill.transforms.detect import NullPolicy
from lakefill.transforms.io import read_raw
from lakefill.transforms.parse import parse_table
from lakefill.schema import TableSchema, dump_schema, infer_schema, load_schema


def test_infer_types(messy_csv):
    raw = read_raw(messy_csv)
    s = infer_schema(raw.table, policy=NullPolicy().fit(raw.table))
    types = {c.name: c.type for c in s.columns}
    assert types == {"id": "id", "age": "integer", "blood_pressure": "integer", "children": "integer",
                     "income": "numeric", "group": "categorical"}
    bp = s.column("blood_pressure")
    assert bp.null_values == ["0"] and bp.nullable and bp.impute
    assert s.column("group").categories == ["high", "low"]
    assert not s.column("id").impute


def test_schema_round_trips_through_yaml(messy_csv, tmp_path):
    raw = read_raw(messy_csv)
    s = infer_schema(raw.table, policy=NullPolicy().fit(raw.table))
    path = write(tmp_path / "s.yaml", dump_schema(s))
    assert load_schema(path) == s


def test_all_null_column_is_text_and_not_imputed(tmp_path):
    raw = read_raw(write(tmp_path / "n.csv", "a,b\n1,\n2,NULL\n3, \n"))
    s = infer_schema(raw.table, policy=NullPolicy().fit(raw.table))
    assert s.column("b").type == "text" and not s.column("b").impute


@pytest.mark.parametrize("text, message", [
    ("columns:\n- name: a\n  type: number\n", "column 'a': type"),
    ("columns:\n- name: a\n  type: integer\n  detectors: {magic: false}\n", "unknown detector"),
    ("columns:\n- name: a\n  type: text\n  impute: true\n", "never imputes"),
    ("columns:\n- name: a\n  type: integer\n- name: a\n  type: integer\n", "duplicate column names"),
    ("columns:\n- name: a\n  type: integer\n  range: {min: 5, max: 1}\n", "greater than max"),
    ("[1, 2]\n", "expected a mapping"),
])
def test_invalid_schema_is_refused_with_a_clear_message(tmp_path, text, message):
    with pytest.raises(SchemaError, match=message):
        load_schema(write(tmp_path / "bad.yaml", text))


def test_schema_naming_a_missing_column(tmp_path):
    s = TableSchema.model_validate({"columns": [{"name": "a", "type": "integer"}, {"name": "zz", "type": "integer"}]})
    with pytest.raises(SchemaError, match=r"\['zz'\]"):
        s.check_columns(["a"], source="data.csv")


def test_mixed_types_quarantine_the_row_with_column_and_value():
    s = TableSchema.model_validate({"columns": [{"name": "n", "type": "numeric"}, {"name": "i", "type": "integer"}]})
    t = pa.table({"n": ["1.5", "abc", "2", None], "i": ["1", "2", "3.5", "4"], "_lf_row_id": [0, 1, 2, 3]})
    typed, bad = parse_table(t, s)
    assert typed.column("n").to_pylist() == [1.5, None]
    assert typed.column("i").to_pylist() == [1, 4]
    assert [q.row_id for q in bad] == [1, 2]
    assert "column 'n': value 'abc' is not a number" in bad[0].reason
    assert "column 'i': value '3.5' is not an integer" in bad[1].reason


def test_numbers_as_people_write_them():
    s = TableSchema.model_validate({"columns": [{"name": "p", "type": "numeric"}]})
    typed, bad = parse_table(pa.table({"p": ["45%", "1,234", " 7 ", "$3"], "_lf_row_id": [0, 1, 2, 3]}), s)
    assert typed.column("p").to_pylist() == [45.0, 1234.0, 7.0, 3.0] and not bad
