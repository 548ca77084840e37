"""Real files as they come: ", "-separated values, other CSV dialects and encodings, nested Parquet
columns, awkward column names, and bad input that must give a clear message, never a traceback."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from deltalake import DeltaTable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import train_and_run, write
from lakefill.models.config import AEConfig
from lakefill.pipelines.cli import main
from lakefill.pipelines.config import JobConfig
from lakefill.pipelines.local_job import run_local, train_to_dir
from lakefill.transforms.detect import NullPolicy
from lakefill.transforms.io import ROW_ID, CsvOptions, read_raw
from lakefill.transforms.parse import detect_and_parse
from lakefill.schema import dump_schema, infer_schema, load_schema
from lakefill.transforms.validate import Validator

TINY = AEConfig(hidden=16, depth=1, code=8, epochs=5, min_steps=0, patience=5, extra_sizes=(), random_state=0,
                without=("trees", "chained", "donors", "gaussian"))
WORK = ["State-gov", "Private", "Self-emp-not-inc", "Federal-gov"]


def adult_like(path: Path, n=300, sep=", ", seed=0) -> Path:
    rng = np.random.default_rng(seed)
    lines = [sep.join(["age", "workclass", "fnlwgt", "education", "hours"])]
    for _ in range(n):
        lines.append(sep.join([str(rng.integers(18, 80)), str(rng.choice(WORK)), str(rng.integers(20000, 400000)),
                               str(rng.choice(["Bachelors", "HS-grad", "Masters"])), str(rng.integers(10, 60))]))
    return write(path, "\n".join(lines) + "\n")


def _infer_validate(path: Path, csv_options=None):
    raw = read_raw(path, csv_options=csv_options)
    schema = infer_schema(raw.table, name=path.stem, policy=NullPolicy().fit(raw.table))
    typed = detect_and_parse(raw, schema)
    good, failed = Validator(schema).validate(typed.table)
    return schema, typed, good, failed


def test_a_schema_inferred_from_a_comma_space_file_accepts_that_file(tmp_path):
    path = adult_like(tmp_path / "adult.csv")
    schema, typed, good, failed = _infer_validate(path)
    assert not typed.quarantined and not failed and good.num_rows == 300
    assert set(schema.column(" workclass").categories) == set(WORK)  # the one normalisation: trimmed
    assert good.column(" workclass").to_pylist()[0].startswith(" ")  # the output keeps the file's text
    normalized = schema.model_copy(update={"columns": [c.model_copy(update={"normalize": True}) if c.type == "categorical"
                                                       else c for c in schema.columns]})
    typed = detect_and_parse(read_raw(path), normalized)
    assert set(pc.unique(typed.table.column(" workclass")).to_pylist()) == set(WORK)


def test_the_model_reads_categories_as_the_schema_wrote_them(tmp_path):
    from lakefill.models.codec import TableCodec

    path = adult_like(tmp_path / "adult.csv")
    schema, typed, good, _ = _infer_validate(path)
    codec = TableCodec(schema=schema).fit(good)
    assert set(codec.categories_[" workclass"]) == set(WORK)  # no " State-gov" twin of "State-gov"
    enc = codec.encode(good)
    assert enc.observed.all()


_WORDS = st.sampled_from(["alpha", "beta", "Gamma", "delta", "café", "cafe\u0301", "N/A", "-", "0", "7", "12.5"])


@st.composite
def messy_tables(draw):
    n = draw(st.integers(20, 60))
    k = draw(st.integers(2, 4))  # one column has no delimiter to find
    sep = draw(st.sampled_from([",", ";", "\t", ", "]))
    cols = []
    for j in range(k):
        kind = draw(st.sampled_from(["num", "cat", "mixed"]))
        if kind == "num":
            base = draw(st.lists(st.integers(-50, 500).map(str), min_size=n, max_size=n))
        elif kind == "cat":
            base = draw(st.lists(_WORDS, min_size=n, max_size=n))
        else:
            base = draw(st.lists(st.one_of(_WORDS, st.integers(0, 99).map(str)), min_size=n, max_size=n))
        pad = draw(st.sampled_from(["", " ", "  "]))
        cols.append([f"{pad}{v}" if i % 3 else v for i, v in enumerate(base)])
    ragged = draw(st.sets(st.integers(0, n - 1), max_size=3))
    lines = [sep.join(f"c{j}" for j in range(k))]
    for i in range(n):
        cells = [cols[j][i] for j in range(k)]
        if i in ragged:
            cells = cells + ["extra"]
        lines.append(sep.join(cells))
    return sep, "\n".join(lines) + "\n", ragged


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messy_tables())
def test_infer_then_validate_quarantines_only_the_broken_rows(tmp_path, case):
    """For generated tables (dialects, stray spaces, tokens, Unicode forms, ragged rows): the
    schema inferred from a file accepts every row of it except the rows that are really broken."""
    sep, text, ragged = case
    if sep.strip() == "":  # a separator that is only white space reads as one column
        return
    path = write(tmp_path / "t.csv", text)
    _, typed, good, failed = _infer_validate(path)
    assert {q.row_id for q in typed.quarantined} == ragged
    assert not failed, failed[:3]
    assert good.num_rows + len(typed.quarantined) == text.count("\n") - 1


def test_semicolon_latin1_file_is_read_with_the_sniffed_or_given_dialect(tmp_path):
    lines = ["name;city;amount"] + [f"n{i};{'Zürich' if i % 2 else 'Genève'};{i * 3}" for i in range(40)]
    path = tmp_path / "semi.csv"
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    raw = read_raw(path, csv_options=CsvOptions(encoding="latin-1"))
    assert raw.dialect["delimiter"] == ";" and raw.dialect["sniffed"] and raw.table.num_columns == 4
    assert set(raw.table.column("city").to_pylist()) == {"Zürich", "Genève"}
    utf8 = read_raw(path)  # the wrong encoding: the rows with bytes that are not UTF-8 are quarantined, named
    assert utf8.quarantined and "not valid UTF-8" in utf8.quarantined[0].reason
    forced = read_raw(path, csv_options=CsvOptions(delimiter=",", encoding="latin-1"))
    assert forced.table.num_columns == 2 and not forced.dialect["sniffed"]
    assert main(["detect", str(path), "--encoding", "latin-1", "--delimiter", ";"]) == 0


def _nested_table(n=200):
    rng = np.random.default_rng(1)
    x = rng.normal(size=n)
    return pa.table({"id": [f"r{i}" for i in range(n)], "x": x,
                     "y": pa.array([None if i % 9 == 0 else float(2 * x[i]) for i in range(n)]),
                     "tags": pa.array([["a", "b", "c"][: i % 4] for i in range(n)], pa.list_(pa.string())),
                     "meta": pa.array([{"k": i, "s": "v"} for i in range(n)]),
                     "blob": pa.array([bytes([i % 256, 7]) for i in range(n)], pa.binary())})


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["local", "beam", "spark"])
def test_nested_parquet_columns_pass_through_untouched(tmp_path, engine, request):
    source = _nested_table()
    pq.write_table(source, tmp_path / "nested.parquet")
    raw = read_raw(tmp_path / "nested.parquet")
    schema = infer_schema(raw.table, name="nested", policy=NullPolicy().fit(raw.table))
    assert {c.name for c in schema.columns if c.type == "passthrough"} == {"tags", "meta", "blob"}
    outcome, inferred = train_and_run(tmp_path / "nested.parquet", tmp_path, engine, name="nested", run_id=engine,
                                      request=request, config=TINY)
    assert inferred == schema and load_schema(tmp_path / "nested.yaml") == schema
    table = DeltaTable(outcome.table).to_pyarrow_table().sort_by(ROW_ID)
    assert outcome.counts["rows_in"] == 200 == table.num_rows
    for name in ("tags", "meta", "blob"):
        assert table.column(name).to_pylist() == source.column(name).to_pylist(), name
    assert table.column("y").null_count == 0  # the columns the stage models are imputed


NAMES = ["Spec Ed. Grad Rate - Grad Cohort #", "a.b", "back`tick", "pct %", " lead", "naïve", "x y"]


def _odd_names_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    rows = [",".join(f'"{n}"' if "," in n else n for n in NAMES)]
    for i in range(120):
        v = rng.normal(size=len(NAMES))
        rows.append(",".join("" if (i + j) % 11 == 0 else f"{v[j] + (j * v[0]):.4f}" for j in range(len(NAMES))))
    return write(tmp_path / "odd.csv", "\n".join(rows) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["local", "beam", "spark"])
def test_awkward_column_names_work_on_every_engine(tmp_path, engine, request):
    outcome, _ = train_and_run(_odd_names_csv(tmp_path), tmp_path, engine, name="odd", run_id=engine, request=request,
                               config=TINY)
    table = DeltaTable(outcome.table).to_pyarrow_table()
    assert table.num_rows == 120 and [n for n in NAMES if n not in table.column_names] == []
    for name in NAMES:
        assert table.column(name).null_count == 0, name


def test_names_that_collide_after_trimming_are_refused_up_front(tmp_path, capsys):
    path = write(tmp_path / "c.csv", "a, a,b\n1,2,3\n")
    assert main(["detect", str(path)]) == 2
    assert "duplicate column names ['a']" in capsys.readouterr().err


def _bad_inputs(tmp_path: Path) -> list[tuple[list[str], str]]:
    good = adult_like(tmp_path / "good.csv", n=40)
    write(tmp_path / "empty.csv", "")
    write(tmp_path / "header.csv", "a,b\n")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    write(tmp_path / "bad.yaml", "columns: [unclosed\n")
    write(tmp_path / "wrongtype.yaml", "columns:\n- name: age\n  type: number\n")
    write(tmp_path / "other.yaml", "columns:\n- name: zzz\n  type: integer\n")
    write(tmp_path / "job.yaml", f"input: {good}\nmodel: {tmp_path / 'nomodel'}\noutput: {tmp_path / 'o'}\n")
    write(tmp_path / "badjob.yaml", "input: x.csv\nmodel: m\noutput: o\nmode: merge\n")
    (tmp_path / "model").mkdir()
    write(tmp_path / "model" / "manifest.json", "{not json")
    return [
        (["detect", str(tmp_path / "missing.csv")], "input file not found"),
        (["detect", str(tmp_path / "empty.csv")], "is empty"),
        (["detect", str(tmp_path / "header.csv")], "no data rows"),
        (["detect", str(tmp_path / "junk.parquet")], "not a readable Parquet file"),
        (["detect", str(good), "--delimiter", ";;"], "delimiter must be one character"),
        (["detect", str(good), "--encoding", "klingon"], "unknown csv encoding"),
        (["validate", str(good), "--schema", str(tmp_path / "bad.yaml")], "bad.yaml"),
        (["validate", str(good), "--schema", str(tmp_path / "wrongtype.yaml")], "column 'age': type"),
        (["validate", str(good), "--schema", str(tmp_path / "other.yaml")], "column(s) ['zzz']"),
        (["run", str(tmp_path / "job.yaml"), "--engine", "local"], "does not exist"),
        (["run", str(tmp_path / "badjob.yaml"), "--engine", "local"], "mode"),
        (["impute", "--input", str(good), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "o.csv")],
         "manifest"),
        (["report", str(tmp_path)], "has no report.json"),
    ]


def test_every_bad_input_gets_one_clear_message_and_exit_code_2(tmp_path, capsys):
    for argv, needle in _bad_inputs(tmp_path):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert needle in err and "Traceback" not in err, (argv, err)
        assert err.startswith("lakefill: error: "), (argv, err)


def test_an_internal_error_says_so_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    path = adult_like(tmp_path / "a.csv", n=30)

    def boom(*args, **kwargs):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr("lakefill.transforms.detect.NullPolicy.fit", boom)
    assert main(["detect", str(path)]) == 3
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: something inside broke" in err and "--debug" in err
    with pytest.raises(RuntimeError, match="something inside broke"):
        main(["detect", str(path), "--debug"])


def test_training_with_nothing_to_learn_says_why(tmp_path, capsys):
    path = adult_like(tmp_path / "a.csv", n=50)
    schema = yaml.safe_load(dump_schema(infer_schema(read_raw(path).table, policy=NullPolicy().fit(read_raw(path).table))))
    for col in schema["columns"]:
        if col["type"] == "categorical":
            col["categories"] = ["nothing-matches"]
    write(tmp_path / "s.yaml", yaml.safe_dump(schema))
    code = main(["train", "--input", str(path), "--schema", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "m"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "nothing to train on: 50 of the 50 rows" in err and "expect_column_values_to_be_in_set" in err


@pytest.mark.slow
def test_a_job_reads_its_csv_dialect_from_the_config_and_the_report_says_which(tmp_path):
    lines = ["a|b|c"] + [f"{i}|{'x' if i % 2 else 'y'}|{i * 0.5}" for i in range(80)]
    path = write(tmp_path / "pipe.csv", "\n".join(lines) + "\n")
    raw = read_raw(path, csv_options=CsvOptions(delimiter="|"))
    schema = infer_schema(raw.table, name="pipe", policy=NullPolicy().fit(raw.table))
    write(tmp_path / "pipe.yaml", dump_schema(schema))
    train_to_dir(str(path), schema, tmp_path / "model", config=TINY, csv_options=CsvOptions(delimiter="|"))
    job = JobConfig.model_validate({"input": str(path), "schema": str(tmp_path / "pipe.yaml"), "model": str(tmp_path / "model"),
                                    "output": str(tmp_path / "out"), "run_id": "pipe", "csv": {"delimiter": "|"}})
    outcome = run_local(job, log=lambda *_: None)
    assert outcome.counts["rows_written"] == 80
    report = json.loads(Path(outcome.report).read_text())
    assert report["csv_dialect"]["delimiter"] == "|" and report["csv_dialect"]["sniffed"] is False


# -- the stage fuzzed end to end -------------------------------------------------------------

_POOL = ["a.b", "x y", " lead", "pct %", "naïve", "#n", "back`tick", "Spec Ed. Rate", "plain"]


@st.composite
def messy_files(draw):
    n = draw(st.integers(30, 70))
    k = draw(st.integers(2, 5))
    names = draw(st.lists(st.sampled_from(_POOL), min_size=k, max_size=k, unique_by=lambda s: s.strip()))
    fmt = draw(st.sampled_from(["csv", "csv", "parquet"]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    cols = {}
    for name in names:
        kind = draw(st.sampled_from(["float", "int_sentinel", "cat", "tokens"]))
        if kind == "float":
            v = [f"{x:.3f}" for x in rng.normal(10, 3, n)]
        elif kind == "int_sentinel":
            v = [str(x) for x in rng.integers(20, 90, n)]
            for i in rng.choice(n, max(2, n // 10), replace=False):
                v[i] = "-1"
        elif kind == "cat":
            v = [f"{' ' if i % 4 == 0 else ''}{w}" for i, w in enumerate(rng.choice(["red", "blue", "green"], n))]
        else:
            v = [str(x) for x in rng.integers(0, 50, n)]
            for i in rng.choice(n, max(2, n // 8), replace=False):
                v[i] = str(rng.choice(["N/A", "?", "", "NULL"]))
        cols[name] = v
    ragged = sorted(set(draw(st.lists(st.integers(0, n - 1), max_size=2)))) if fmt == "csv" else []
    bad_bytes = sorted(set(draw(st.lists(st.integers(0, n - 1), max_size=2))) - set(ragged)) if fmt == "csv" else []
    nested = fmt == "parquet" and draw(st.booleans())
    return {"n": n, "names": names, "cols": cols, "fmt": fmt, "sep": draw(st.sampled_from([",", ";"])),
            "ragged": ragged, "bad_bytes": bad_bytes, "nested": nested}


def _write_messy(case, folder: Path) -> Path:
    names, cols, n = case["names"], case["cols"], case["n"]
    if case["fmt"] == "parquet":
        data = {name: pa.array([v if v != "" else None for v in cols[name]], pa.string()) for name in names}
        if case["nested"]:
            data["tags"] = pa.array([["t"] * (i % 3) for i in range(n)], pa.list_(pa.string()))
        path = folder / "messy.parquet"
        pq.write_table(pa.table(data), path, row_group_size=25)
        return path
    sep = case["sep"]

    def cell(text: str) -> bytes:
        raw = text.encode()
        return b'"' + raw.replace(b'"', b'""') + b'"' if (sep.encode() in raw or b'"' in raw or text != text.strip()) else raw

    lines = [sep.encode().join(cell(name) for name in names)]
    for i in range(n):
        cells = [cell(cols[name][i]) for name in names]
        if i in case["ragged"]:
            cells.append(b"extra")
        if i in case["bad_bytes"]:
            cells[0] = cells[0] + b"\xff"
        lines.append(sep.encode().join(cells))
    path = folder / "messy.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _run_both(path: Path, folder: Path):
    """infer -> train (tiny) -> the local and the Beam engine; a LakefillError before any commit
    is an allowed ending, anything else fails the test."""
    from lakefill.pipelines.beam_pipeline import run_beam
    from lakefill.errors import LakefillError

    raw = read_raw(path)
    schema = infer_schema(raw.table, name="messy", policy=NullPolicy().fit(raw.table))
    write(folder / "messy.yaml", dump_schema(schema))
    outcomes = {}
    try:
        train_to_dir(str(path), schema, folder / "model", config=TINY)
    except LakefillError as err:
        return {"error": str(err)}
    for engine in ("local", "beam"):
        job = JobConfig.model_validate({"input": str(path), "schema": str(folder / "messy.yaml"), "model": str(folder / "model"),
                                        "output": str(folder / engine), "run_id": "fuzz", "max_quarantine_share": 0.5})
        try:
            outcomes[engine] = run_local(job, log=lambda *_: None) if engine == "local" else run_beam(job, [], log=lambda *_: None)
        except LakefillError as err:
            assert not (folder / engine / "table" / "_delta_log").exists(), err
            assert not (folder / engine / "quarantine" / "_delta_log").exists(), err
            outcomes[engine] = err
    return outcomes


def _check_fuzz_case(case, folder: Path):
    path = _write_messy(case, folder)
    outcomes = _run_both(path, folder)
    if "error" in outcomes:
        return
    assert type(outcomes["local"]) is type(outcomes["beam"]), outcomes
    if isinstance(outcomes["local"], Exception):
        return
    tables = {}
    for engine, outcome in outcomes.items():
        c = outcome.counts
        assert c["rows_in"] == c["rows_written"] + c["rows_quarantined"] == case["n"], (engine, c)
        table = DeltaTable(outcome.table).to_pyarrow_table().sort_by(ROW_ID)
        quarantine = DeltaTable(outcome.quarantine).to_pyarrow_table().sort_by(ROW_ID)
        assert set(case["ragged"]) | set(case["bad_bytes"]) <= set(quarantine.column(ROW_ID).to_pylist())
        tables[engine] = (table, dict(zip(quarantine.column(ROW_ID).to_pylist(), quarantine.column("reason").to_pylist())))
    (a, qa), (b, qb) = tables["local"], tables["beam"]
    assert qa == qb
    assert a.column_names == b.column_names and a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            assert np.allclose(x.to_numpy(zero_copy_only=False), y.to_numpy(zero_copy_only=False), atol=1e-6, equal_nan=True), name
        else:
            assert x.to_pylist() == y.to_pylist(), name


@pytest.mark.slow
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(messy_files())
def test_fuzzed_tables_run_on_local_and_beam_alike(tmp_path_factory, case):
    _check_fuzz_case(case, tmp_path_factory.mktemp("fuzz"))


@pytest.mark.fuzz
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(messy_files())
def test_fuzzed_tables_run_on_local_and_beam_alike_many(tmp_path_factory, case):
    """The same with a larger budget: ``pytest -m fuzz`` (about 15 s an example here)."""
    _check_fuzz_case(case, tmp_path_factory.mktemp("fuzz"))


def test_a_short_training_run_on_a_small_table_works(tmp_path):
    """--epochs is honoured as given: 1 to 10 epochs of one or two steps each (found by the fuzz
    test: the one-cycle schedule divided by zero on such runs)."""
    from lakefill.models.training import fit_model

    path = adult_like(tmp_path / "a.csv", n=30)
    schema, _, good, _ = _infer_validate(path)
    for epochs in (1, 2, 10):
        cfg = TINY.model_copy(update={"epochs": epochs}) if hasattr(TINY, "model_copy") else None
        if cfg is None:
            from dataclasses import replace

            cfg = replace(TINY, epochs=epochs)
        fitted = fit_model(good, schema, config=cfg)
        assert fitted.metrics["epochs_run"] <= epochs
