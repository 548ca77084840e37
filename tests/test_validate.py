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


# -- the suite evaluated with Arrow kernels gives GX's own result, row for row ------------------

FUZZ_SCHEMA = TableSchema.model_validate({"name": "fuzz", "columns": [
    {"name": "id", "type": "id", "unique": True, "nullable": False},
    {"name": "code", "type": "integer", "unique": True},
    {"name": "age", "type": "integer", "impute": True, "range": {"min": 0, "max": 120}},
    {"name": "bp", "type": "numeric", "impute": True, "range": {"min": 40.5, "max": 250}},
    {"name": "score", "type": "numeric", "nullable": False, "range": {"min": -1, "max": None}},
    {"name": "color", "type": "categorical", "impute": True, "categories": ["red", "blue", "Grün", "n/a"]},
    {"name": "plan", "type": "categorical", "nullable": False, "categories": ["a", "b"]},
    {"name": "note", "type": "text"},
]})


def _fuzz_batch(rng, n: int) -> pa.Table:
    import numpy as np

    def pick(options, p_null=0.15):
        return [None if rng.random() < p_null else options[rng.integers(len(options))] for _ in range(n)]

    floats = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 40.5, 40.4999, 250.0, 250.0001, 1e300, -1.0,
              -1.0000001, 99.9]
    texts = ["red", " red", "RED", "blue", "Grün", "Gru\u0308n", "green", "", "n/a", "N/A", "a", "b", "c", "ä"]
    names = [c.name for c in FUZZ_SCHEMA.columns]
    na = [[names[j] for j in range(len(names)) if rng.random() < 0.1] for _ in range(n)]
    return pa.table({
        "id": pick([f"k{i}" for i in range(n // 2 + 1)], 0.05),
        "code": pa.array(pick(list(range(-3, n)) + [2**62], 0.1), pa.int64()),
        "age": pa.array(pick([-1, 0, 5, 120, 121, 300, 2**40], 0.2), pa.int64()),
        "bp": pa.array(pick(floats, 0.2), pa.float64()),
        "score": pa.array(pick(floats, 0.1), pa.float64()),
        "color": pick(texts), "plan": pick(texts), "note": pick(texts),
        "_lf_not_applicable": pa.array(na, pa.list_(pa.string())),
        "_lf_row_id": pa.array(rng.permutation(np.arange(1000, 1000 + n)), pa.int64()),
    })


@pytest.mark.parametrize("stage", ["pre", "post"])
def test_the_arrow_evaluation_gives_gx_s_own_result_row_for_row(stage):
    """Over many generated batches with every bad input the schema's expectations meet (nulls,
    NaN, infinities, -0.0, bounds and just past them, huge integers, duplicates, unknown and
    unnormalised categories, not-applicable cells), the Arrow kernels and GX quarantine the same
    rows with the same reasons, in the same order, and count the same failures."""
    import numpy as np

    arrow, gx = Validator(FUZZ_SCHEMA, stage=stage), Validator(FUZZ_SCHEMA, stage=stage, engine="gx")
    assert arrow.checks is not None and gx.checks is None
    assert {c.type for c in arrow.checks} == {"expect_column_values_to_be_between", "expect_column_values_to_be_in_set",
                                               "expect_column_values_to_be_unique", "expect_column_values_to_not_be_null"}
    rng = np.random.default_rng(7 if stage == "pre" else 8)
    for k in range(40):
        batch = _fuzz_batch(rng, int(rng.integers(1, 120)))
        good_a, bad_a = arrow.validate(batch)
        good_g, bad_g = gx.validate(batch)
        assert good_a.equals(good_g), k
        assert [(q.row_id, q.reason, q.stage, q.record) for q in bad_a] == \
               [(q.row_id, q.reason, q.stage, q.record) for q in bad_g], k
        assert arrow.last_failures == gx.last_failures, k
    assert arrow.engine_used == {"arrow": 40} and gx.engine_used == {"gx": 40}
    assert arrow.summary.to_dict() == gx.summary.to_dict() and arrow.summary.rows_failed > 0
    assert set(arrow.summary.by_expectation) == {c.label for c in arrow.checks}  # every check failed some rows


def test_a_suite_with_an_expectation_arrow_does_not_take_runs_in_gx():
    v = Validator(SCHEMA)  # the user's regex expectation on 'note'
    assert v.checks is None
    v.validate(_batch())
    assert v.engine_used == {"gx": 1}
