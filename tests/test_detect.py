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
    mnist = root / "mnist" / "mnist_test10k.npz"  # the full set only: MNIST's pixels as a clean table
    dmv_main(["--data", str(root / "dmv"), "--tabular", str(root / "tabular"), "--mnist", str(mnist),
              "--json", str(out)])
    import json

    result = json.loads(out.read_text())
    overall = result["overall"]
    assert overall["truth"] == (67 if which == "fixture" else 70)
    target = 0.9 if which == "fixture" else 0.95
    assert overall["precision"] >= target and overall["recall"] >= target
    assert result["tables"]["Mass2"]["recall"] >= 0.8  # the structural "not applicable" zeros
    clean = result["clean"]  # the tabular tables (ionosphere, compression ...), MNIST, unlabelled DMV columns
    assert clean["false_findings"] == 0 and clean["replaced_cells"] == 0, clean
    assert {"ionosphere", "compression", "dmv unlabelled columns"} <= set(clean["tables"])
    assert ("mnist" in clean["tables"]) == (which == "full")
    assert "clean tables: 0 false findings" in capsys.readouterr().out


@pytest.mark.parametrize("which", ["fixture", "full"])
def test_complete_benchmark_tables_have_no_findings(which, data, request):
    from lakefill.transforms.io import read_raw

    root = data if which == "fixture" else request.getfixturevalue("shared_data")
    names = sorted(p.stem for p in (root / "tabular").glob("*.csv") if p.stem != "bank")  # bank: its own "unknown"
    assert {"letter", "spam", "breast", "wine_red", "nursery", "ionosphere", "compression"} <= set(names)
    for name in names:
        p = NullPolicy().fit(read_raw(root / "tabular" / f"{name}.csv").table)
        assert not any(p.findings_.values()), (name, p.report())


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


def _numbers(values, fmt="{:.5f}"):
    return [fmt.format(v) for v in values]


def test_a_boundary_is_a_value_and_only_the_stand_in_is_found():
    """A scale clipped to [-1, 1] piles up at both edges; a non-negative quantity with 30% zeros
    rises smoothly from 0; an income column holds a 99999 stand-in: only the stand-in is found."""
    rng = np.random.default_rng(7)
    n = 1000
    clipped = np.clip(rng.normal(0.0, 0.7, n), -1.0, 1.0)
    amount = np.where(rng.random(n) < 0.3, 0.0, rng.gamma(1.5, 10.0, n))
    income = rng.normal(40_000, 8_000, n)
    income[rng.choice(n, 40, replace=False)] = 99999
    p = NullPolicy().fit(_table(clipped=_numbers(clipped), amount=_numbers(amount, "{:.1f}"),
                                income=_numbers(income, "{:.0f}")))
    assert (clipped == -1).sum() > 50 and (clipped == 1).sum() > 50 and (amount == 0).mean() > 0.25
    assert _found(p, "clipped") == {} and _found(p, "amount") == {}
    assert _found(p, "income") == {"99999": "sentinel"}
    assert not p.findings_["income"][0].suspect
    applied, counts = p.apply(_table(clipped=["-1.00000", "1.00000"], amount=["0.0", "3.5"], income=["99999", "41000"]))
    assert counts == {"clipped": 0, "amount": 0, "income": 1}
    assert applied.column("clipped").to_pylist() == ["-1.00000", "1.00000"]


def _edge_table(rng, n=1000):
    """cement; ash: 0 (30% of the rows, those with more cement) at the edge of a column that
    thins out towards 0; skin: 0 (30%, rows drawn at random) at the edge of a column from ~5 up."""
    no_ash = rng.random(n) < 0.3
    cement = rng.normal(300, 40, n) + np.where(no_ash, 120, 0)
    ash = np.where(no_ash, 0.0, rng.normal(120, 30, n))
    no_skin = rng.random(n) < 0.3
    skin = np.where(no_skin, 0.0, np.round(rng.normal(30, 8, n)))
    return _table(cement=_numbers(cement, "{:.1f}"), ash=_numbers(ash, "{:.1f}"), skin=_numbers(skin, "{:.0f}"))


def test_an_edge_value_is_kept_unless_its_rows_look_random_then_it_is_a_suspect():
    rng = np.random.default_rng(3)
    t = _edge_table(rng)
    before = NullPolicy().fit(t)
    # both zeros lie outside the Tukey fences of their columns, at the edge, without standing apart
    assert _found(before, "ash") == {} and _found(before, "skin") == {"0": "sentinel"}
    skin = before.findings_["skin"][0]
    assert skin.suspect and "random sample" in skin.evidence and "minimum" in skin.evidence
    assert before.suspects() == [skin]
    applied, counts = before.apply(t)
    assert counts["skin"] == 0 and applied.column("skin").to_pylist() == t.column("skin").to_pylist()
    # the schema pins it: replaced
    schema = TableSchema(columns=[ColumnSchema(name="skin", type="integer", null_values=["0"])])
    pinned = NullPolicy(schema=schema).fit(t)
    assert not any(f.suspect for f in pinned.findings_["skin"]) and "0" in pinned.null_values("skin")


def test_zeros_at_the_bottom_of_a_bounded_scale_are_not_structural():
    """Two pixel-like columns, 0 on the same rows (40%), the other values rising to a pile at
    255: the scale's edge, no "not applicable"; the same zeros among counts of pupils are."""
    rng = np.random.default_rng(5)
    n = 1500
    blank = rng.random(n) < 0.4
    def pixels():
        v = np.where(rng.random(n) < 0.35, rng.integers(250, 256, n), rng.integers(20, 250, n))
        return [str(x) for x in np.where(blank, 0, v)]
    def pupils():
        v = np.round(rng.lognormal(4.0, 0.8, n)).astype(int) + 10
        return [str(x) for x in np.where(blank, 0, v)]
    p = NullPolicy().fit(_table(a=pixels(), b=pixels()))
    assert _found(p, "a") == {} and _found(p, "b") == {}
    q = NullPolicy().fit(_table(a=pupils(), b=pupils()))
    assert _found(q, "a") == {"0": "structural"} and _found(q, "b") == {"0": "structural"}


def _years(rng, n):
    start = rng.integers(2001, 2016, n)
    return [f"{y}-{(y + 1) % 100:02d}" for y in start]


def test_a_value_in_a_format_of_its_own_is_a_syntactic_outlier():
    """Year ranges with an "All Indicators" aggregate row; phone numbers with a placeholder of one
    repeated digit; ids with "0000000"."""
    rng = np.random.default_rng(11)
    n = 800
    years = _years(rng, n)
    for i in rng.choice(n, 6, replace=False):
        years[i] = "All Indicators"
    phones = [f"{rng.integers(200, 999)}{rng.integers(1000000, 9999999)}" for _ in range(n)]
    ids = [f"{rng.integers(1000000, 9999999)}" for _ in range(n)]
    for i in rng.choice(n, 12, replace=False):
        phones[i] = "9999999999"
    for i in rng.choice(n, 9, replace=False):
        ids[i] = "0000000"
    p = NullPolicy().fit(_table(year=years, phone=phones, id=ids))
    assert _found(p, "year") == {"All Indicators": "syntactic"}
    assert _found(p, "phone") == {"9999999999": "syntactic"}
    assert _found(p, "id") == {"0000000": "syntactic"}
    year = p.findings_["year"][0]
    assert year.count == 6 and "'9999-99'" in year.evidence and "syntactic outlier" in year.evidence
    assert "one character repeated" in p.findings_["phone"][0].evidence
    applied, counts = p.apply(_table(year=years, phone=phones, id=ids))
    assert counts["year"] == 6 and applied.column("year").null_count == 6
    # switched off for one column in the schema: that column keeps its values
    schema = TableSchema(columns=[ColumnSchema(name="year", type="categorical", detectors={"syntactic": False})])
    assert _found(NullPolicy(schema=schema).fit(_table(year=years)), "year") == {}


def test_columns_without_one_format_have_no_syntactic_outlier():
    """Words of a category, signed decimals, free text, a mix of formats, one real repeated-digit
    value among ids (it occurs as often as the others), and two rare formats too many to be
    stand-ins: nothing found."""
    rng = np.random.default_rng(12)
    n = 800
    words = list(rng.choice(["admin.", "blue-collar", "technician", "services", "retired", "unknown-ish"], n))
    decimals = [f"{x:.3f}" for x in rng.normal(0, 1, n)]
    names = [" ".join(rng.choice(["Ann", "Bo", "Cy", "Dee", "Ed", "Flo"], rng.integers(1, 4))) for _ in range(n)]
    mixed = [rng.choice([f"{rng.integers(2001, 2016)}-{rng.integers(10, 99)}", f"FY{rng.integers(10, 99)}",
                         f"{rng.integers(1, 12)}/{rng.integers(2001, 2016)}"]) for _ in range(n)]
    ids = [f"{rng.integers(1000000, 9999999)}" for _ in range(n)]
    ids[5] = "7777777"  # once, as often as every other id
    years = _years(rng, n)
    for i, v in zip(rng.choice(n, 8, replace=False), ["All", "Total", "n.a", "Sum", "Avg", "x1", "*", "Q"]):
        years[i] = v  # eight formats: a mixed column, not a stand-in
    p = NullPolicy().fit(_table(words=words, decimals=decimals, names=names, mixed=mixed, ids=ids, years=years))
    for c in ("words", "decimals", "names", "mixed", "ids", "years"):
        assert not [f for f in p.findings_[c] if f.detector == "syntactic"], (c, p.findings_[c])


def _survey(seed=0, n=2000, dependent=True, default="random"):
    """A region decides income, a score and a product; ``default``: "random" puts "Other" in the
    product of 40% of the rows drawn at random (a form's default when the answer was unknown),
    "real" makes "Other" the product most of region A buys (a real value, its rows a group)."""
    rng = np.random.default_rng(seed)
    region = rng.choice(list("ABCD"), n)
    k = np.array(["ABCD".index(r) for r in region])
    if not dependent:  # every column on its own: a design table, every value's rows random
        k = rng.integers(0, 4, n)
    income = rng.normal(10 * k, 3) if dependent else rng.normal(15, 10, n)
    score = rng.normal(5 * k, 2) if dependent else rng.normal(5, 2, n)
    products = np.array([f"p{j}" for j in range(8)])
    product = products[(k * 2 + rng.integers(0, 2, n)) % 8] if dependent else rng.choice(products, n)
    if default == "random":
        product = np.where(rng.random(n) < 0.4, "Other", product)
    else:
        product = np.where((k == 0) & (rng.random(n) < 0.9), "Other", product)
    return _table(region=list(region), income=[f"{v:.2f}" for v in income], score=[f"{v:.1f}" for v in score],
                  product=list(product))


def test_a_frequent_value_on_random_rows_is_a_stand_in():
    p = NullPolicy().fit(_survey())
    assert _found(p, "product") == {"Other": "random"}
    assert all(_found(p, c) == {} for c in ("region", "income", "score"))
    f = p.findings_["product"][0]
    assert "match the column's other rows within chance on all 3 other columns" in f.evidence
    assert "random-DMV" in f.evidence and not f.suspect
    schema = TableSchema(columns=[ColumnSchema(name="product", type="categorical", detectors={"random": False})])
    assert _found(NullPolicy(schema=schema).fit(_survey()), "product") == {}


def test_a_frequent_value_is_a_value_when_its_rows_are_a_group_or_nothing_depends_on_anything():
    """"Other" bought in region A: its rows differ from the table (a real value). A table of
    independent columns (every combination, as nursery): a frequent value on random rows is no
    evidence there, every value's rows are random."""
    assert not any(NullPolicy().fit(_survey(default="real")).findings_.values())
    assert not any(NullPolicy().fit(_survey(dependent=False)).findings_.values())
