import pyarrow as pa
import pytest

from lakefill.errors import SchemaError, ValidationFailed
from lakefill.schema import TableSchema
from lakefill.transforms.validate import Validator

pytestmark = pytest.mark.gx

SCHEMA = TableSchema.model_validate({"name": "t", "columns": [
    {"name": "id", "type": "id", "unique": True, "nullable": False},
    {"name": "age", "type": "integer", "impute": True, "range": {"min": 0, "max": 120}},
    {"name": "color", "type": "categorical", "impute": True, "categories": ["red", "blue"]},
    {"name": "note", "type": "text", "expectations": [
        {"type": "expect_column_values_to_match_regex", "kwargs": {"regex": "^[a-z]*$"}}]},
]})


def _batch():
    return pa.table({"id": ["a", "b", "c", "c", "e"], "age": [5, 300, None, 7, 8],
                     "color": ["red", "green", "blue", None, "red"], "note": ["ok", "ok", "ok", "ok", "BAD1"],
                     "_lf_row_id": pa.array([10, 11, 12, 13, 14], pa.int64())})


@pytest.fixture(scope="module")
def validator():
    return Validator(SCHEMA)


def test_row_level_failures_go_to_quarantine_with_the_expectation(validator):
    good, bad = validator.validate(_batch())
    assert good.column("_lf_row_id").to_pylist() == [10]
    reasons = {q.row_id: q.reason for q in bad}
    assert "expect_column_values_to_be_between(age): value 300" in reasons[11]
    assert "expect_column_values_to_be_in_set(color): value 'green'" in reasons[11]
    assert "expect_column_values_to_be_unique(id)" in reasons[12] and "expect_column_values_to_be_unique(id)" in reasons[13]
    assert "expect_column_values_to_match_regex(note)" in reasons[14]
    assert all(q.stage == "validate-pre" for q in bad)
    assert validator.summary.rows_failed == 4


def test_nulls_are_fine_before_imputation_but_not_after():
    post = Validator(SCHEMA, stage="post")
    t = pa.table({"id": ["a", "b"], "age": [5, None], "color": ["red", "blue"], "note": ["x", "y"],
                  "_lf_row_id": pa.array([0, 1], pa.int64())})
    good, bad = post.validate(t)
    assert [q.row_id for q in bad] == [1] and "expect_column_values_to_not_be_null(age)" in bad[0].reason


def test_table_level_failure_fails_the_run():
    s = SCHEMA.model_copy(update={"expectations": [
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 100}}]})
    s = TableSchema.model_validate(s.model_dump())
    with pytest.raises(ValidationFailed, match="expect_table_row_count_to_be_between"):
        Validator(s).validate(_batch())


def test_unknown_user_expectation_is_refused_at_construction():
    s = TableSchema.model_validate({"columns": [{"name": "a", "type": "text", "expectations": [{"type": "expect_magic"}]}]})
    with pytest.raises(SchemaError, match="unknown expectation type 'expect_magic' on column 'a'"):
        Validator(s)


def test_data_docs_are_written(validator, tmp_path):
    good, _ = validator.validate(_batch())
    index = validator.write_data_docs(good, tmp_path / "docs")
    assert index.exists() and "<html" in index.read_text().lower()


def test_data_docs_show_the_failures_the_table_and_the_run_and_need_no_network(validator, tmp_path):
    import re

    index = validator.write_data_docs(_batch(), tmp_path / "docs", run_id="run-42", asset="patients")
    site = index.parent
    pages = list(site.rglob("*.html"))
    run_pages = [p for p in pages if "run-42" in p.as_posix()]
    assert run_pages, "the validation page is filed under the run id"
    text = run_pages[0].read_text()
    assert "Data asset: patients (run run-42)" in text and "Data asset: None" not in text
    assert "green" in text and "300" in text  # the values that broke the set and the range expectations
    assert "Failed" in text
    for page in pages:  # no request leaves the machine: styles come from the site itself
        body = page.read_text()
        assert not re.search(r'<(link|script|img)\b[^>]*(href|src)="https?://', body), page
        for href in re.findall(r'<link rel="stylesheet" href="([^"]+)"', body):
            if "bootstrap" in href:
                assert (page.parent / href).resolve().exists(), href
    assert (site / "static" / "offline" / "bootstrap.min.css").stat().st_size > 100_000
