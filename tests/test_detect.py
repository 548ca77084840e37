import numpy as np
import pyarrow as pa
import pytest

from benchmarks.dmv import main as dmv_main
from lakefill.transforms.detect import DISGUISED, NotFittedError, NullPolicy
from lakefill.schema import ColumnSchema, TableSchema


def _table(**cols):
    return pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()})


def _found(policy, column):
    return {f.value: f.detector for f in policy.findings_[column]}


def test_tokens_found_blank_is_not_reported():
    t = _table(x=["1", "NULL", "n/a", "?", "", "  ", "2"] * 5)
    p = NullPolicy().fit(t)
    assert _found(p, "x") == {"NULL": "token", "n/a": "token", "?": "token"}


def test_zero_blood_pressure_is_missing_but_zero_children_is_a_value():
    rng = np.random.default_rng(0)
    bp = [str(v) for v in rng.integers(60, 100, 200)] + ["0"] * 20
    kids = [str(v) for v in rng.poisson(1.2, 220)]
    p = NullPolicy().fit(_table(bp=bp, kids=kids))
    assert _found(p, "bp") == {"0": "sentinel"}
    assert _found(p, "kids") == {}


def test_minus_one_among_positives_and_nines():
    rng = np.random.default_rng(1)
    ref = [str(v) for v in rng.integers(1000, 90000, 200)] + ["-1"] * 5
    income = [f"{v:.2f}" for v in rng.normal(40000, 8000, 200)] + ["999999"] * 5
    p = NullPolicy().fit(_table(ref=ref, income=income))
    assert _found(p, "ref") == {"-1": "sentinel"}
    assert _found(p, "income") == {"999999": "sentinel"}


def test_ninety_nine_that_continues_a_count_is_a_value():
    counts = [str(v) for v in range(0, 200)] * 2 + ["99"] * 4
    assert _found(NullPolicy().fit(_table(c=counts)), "c") == {}


def test_lone_non_numeric_code_in_numeric_column():
    vals = [str(v) for v in range(100)] + ["s"] * 30
    assert _found(NullPolicy().fit(_table(n=vals)), "n") == {"s": "non_numeric"}


def test_non_numeric_needs_a_numeric_column():
    grades = ["K", "PK"] + [str(g) for g in range(1, 13)] * 5
    assert _found(NullPolicy().fit(_table(g=grades)), "g") == {}


def test_co_missing_category():
    n = 60
    status = ["M"] * (n - 6) + ["U"] * 6
    a = [str(i) for i in range(n - 6)] + [""] * 6
    b = [f"{i}.5" for i in range(n - 6)] + [""] * 6
    c = [f"s{i}" for i in range(n - 6)] + [""] * 6
    d = [f"t{i}" for i in range(n - 6)] + [""] * 6
    p = NullPolicy().fit(_table(status=status, a=a, b=b, c=c, d=d))
    assert _found(p, "status") == {"U": "co_missing"}


def test_pinned_rules_win_and_detectors_can_be_switched_off():
    vals = ["1", "2", "NULL", "-", "7"] * 10
    schema = TableSchema(columns=[ColumnSchema(name="x", type="integer", null_values=["7"], not_null_values=["-"],
                                               detectors={"token": True})])
    p = NullPolicy(schema=schema).fit(_table(x=vals))
    assert _found(p, "x") == {"7": "pinned", "NULL": "token"}
    off = TableSchema(columns=[ColumnSchema(name="x", type="integer", detectors={"token": False})])
    assert _found(NullPolicy(schema=off).fit(_table(x=vals)), "x") == {}


def test_apply_replaces_and_counts_and_records_provenance():
    t = _table(x=["1", "NULL", "", "3"] * 3, y=["a", "b", "?", "a"] * 3)
    p = NullPolicy().fit(t)
    out, counts = p.apply(t)
    assert counts == {"x": 3, "y": 3}
    assert out.column("x").to_pylist()[:4] == ["1", None, None, "3"]
    assert out.column(DISGUISED).to_pylist()[:4] == [[], ["x"], ["y"], []]


def test_unfitted_policy_is_refused():
    with pytest.raises(NotFittedError):
        NullPolicy().apply(_table(x=["1"]))


def test_policy_round_trips_through_dict():
    t = _table(x=["1", "NULL", "3"] * 10)
    p = NullPolicy().fit(t)
    q = NullPolicy.from_dict(p.to_dict())
    assert q.null_values("x") == p.null_values("x")


@pytest.mark.parametrize("which", ["fixture", "full"])
def test_dmv_benchmark_meets_the_target(which, data, request, capsys, tmp_path):
    """Precision and recall >= 0.9 on the FAHES tables: the slices in tests/data (67 labels) and,
    where it is beside the checkout, the full set (70 labels)."""
    root = data if which == "fixture" else request.getfixturevalue("shared_data")
    out = tmp_path / "dmv.json"
    dmv_main(["--data", str(root / "dmv"), "--json", str(out)])
    import json

    result = json.loads(out.read_text())
    overall = result["overall"]
    assert overall["truth"] == (67 if which == "fixture" else 70)
    assert overall["precision"] >= 0.9 and overall["recall"] >= 0.9
    assert result["tables"]["Mass2"]["recall"] >= 0.8  # the structural "not applicable" zeros
    assert "overall" in capsys.readouterr().out


@pytest.mark.parametrize("which", ["fixture", "full"])
def test_complete_benchmark_tables_have_no_findings(which, data, request):
    from lakefill.transforms.io import read_raw

    root = data if which == "fixture" else request.getfixturevalue("shared_data")
    for name in ("letter", "spam", "breast", "wine_red", "nursery"):
        p = NullPolicy().fit(read_raw(root / "tabular" / f"{name}.csv").table)
        assert not any(p.findings_.values()), name


@pytest.mark.parametrize("which", ["fixture", "full"])
def test_bank_findings_are_its_unknown_categories_and_never_contacted(which, data, request):
    """bank's own encodings: "unknown" categories and pdays = -1 ("never contacted": not
    applicable). On the full table pdays' -1 and poutcome's "unknown" cover 82% of their
    columns: suspects, kept as values. (The slice's first 1,000 rows were never contacted: no
    pdays but -1, so nothing to set it apart from; its poutcome and contact are all "unknown".)"""
    from lakefill.transforms.io import read_raw

    root = data if which == "fixture" else request.getfixturevalue("shared_data")
    p = NullPolicy().fit(read_raw(root / "tabular" / "bank.csv").table)
    found = {(c, f.value) for c, fs in p.findings_.items() for f in fs}
    unknowns = {("job", "unknown"), ("education", "unknown"), ("contact", "unknown"), ("poutcome", "unknown")}
    if which == "full":
        assert found == unknowns | {("pdays", "-1")}
        assert {f.column for f in p.suspects()} == {"pdays", "poutcome"}
    else:
        assert found == unknowns


def test_fit_counts_each_value_trimmed_as_python_trims_it_in_the_order_seen():
    """``fit`` counts a column's values with Arrow (``_trimmed_counts``): the same counts and
    the same order of first appearance as ``Counter`` over Python's ``str.strip`` (ties in the
    findings are broken by that order), for nulls, blanks and every kind of Unicode space."""
    from collections import Counter

    from lakefill.transforms.detect import _trimmed, _trimmed_counts

    col = pa.chunked_array([["a", " a", None, "", " ", "\u3000b\t", "b", "N/A "],
                            ["\x1cc\x1f", None, "a", "  ", "\u00a0x", "x", "\u2003", "N/A"]], pa.string())
    got, want = _trimmed_counts(col), Counter(_trimmed(col))
    assert got == want and list(got.items()) == list(want.items())
    assert got == Counter({"a": 3, "": 6, "b": 2, "N/A": 2, "c": 1, "x": 2})
