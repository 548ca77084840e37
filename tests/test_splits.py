"""A large text file read as several byte ranges (lakefill.transforms.textsplit): the same rows,
row ids and quarantine reasons whatever the number of splits, on every engine."""

import csv
import io
import json
import random

import pytest

from lakefill.transforms import textsplit
from lakefill.transforms.textsplit import text_splits


def _csv_bytes(n=300, seed=0, terminator="\n") -> bytes:
    rnd = random.Random(seed)
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator=terminator)
    w.writerow(["id", "text", "v"])
    for i in range(n):
        w.writerow([str(i), rnd.choice(["plain", "with,comma", "line\nbreak", 'quote "x" in', "crlf\r\nin", ""]),
                    f"{rnd.random():.4f}"])
        if i % 37 == 0:
            buf.write(terminator)  # a blank line is no record
        if i % 53 == 0:
            buf.write(f"{i}x,ragged{terminator}")  # a record of the wrong width: quarantined, still a record
    return buf.getvalue().encode()


@pytest.mark.parametrize("terminator", ["\n", "\r\n"])
def test_splits_start_on_records_and_carry_their_record_and_line_numbers(monkeypatch, terminator):
    monkeypatch.setattr(textsplit, "BLOCK", 61)  # tiny blocks: quotes and line ends across block edges
    data = _csv_bytes(terminator=terminator)
    text = data.decode()
    records = [r for r in csv.reader(io.StringIO(text, newline="")) if r][1:]
    for n in (2, 3, 17):
        splits = text_splits(io.BytesIO(data), len(data), n=n, quotechar='"', delimiter=",", encoding="utf-8")
        assert len(splits) == n and splits[-1].end == len(data)
        got = []
        for s, nxt in zip(splits, splits[1:] + [None]):
            assert nxt is None or s.end == nxt.start
            part = data[s.start:s.end].decode()
            assert s.first_line == text[:len(data[:s.start].decode())].count("\n")
            rows = [r for r in csv.reader(io.StringIO(part, newline="")) if r]
            assert rows[0] == records[s.first_record]
            got += rows
        assert got == records


def test_files_that_cannot_be_split_by_counting_quotes_are_read_whole():
    def splits(data, **kw):
        return text_splits(io.BytesIO(data), len(data), n=2, quotechar='"', delimiter=",", encoding="utf-8", **kw)

    body = b"".join(b"%d,x\n" % i for i in range(20))
    assert splits(b"id,t\n" + body) is not None
    assert splits(b'id,t\n1,12" pipe\n' + body) is None  # a quote inside an unquoted field
    assert splits(b"id,t\n1,a\r2,b\n" + body) is None  # a carriage return that ends no line
    assert splits(b'id,t\n1,"open\n' + body) is None  # a quote never closed
    assert splits(b"id,t\n1,a\n") is None  # too few records to split
    assert text_splits(io.BytesIO(body), len(body), n=2, quotechar='"', delimiter=",", encoding="utf-16") is None


def test_json_lines_split_on_every_line():
    lines = [json.dumps({"a": i, "t": "x\ny"}) if i % 7 else "" for i in range(100)]
    data = ("\n".join(lines) + "\n").encode()
    splits = text_splits(io.BytesIO(data), len(data), n=3, quotechar=None, delimiter=None, encoding="utf-8", header=False)
    got = []
    for s in splits:
        part = data[s.start:s.end].decode().split("\n")[:-1]
        assert part[0] == lines[s.first_record] and s.first_line == s.first_record
        got += part
    assert got == lines


def _bad_csv(path, n=400):
    """Quoted newlines and delimiters, CRLF records, blank lines, ragged rows and undecodable bytes."""
    rnd = random.Random(1)
    out = io.BytesIO()
    out.write(b"id,text,v\r\n")
    for i in range(n):
        text = rnd.choice([b"plain", b'"a, b"', b'"two\nlines"', b'"say ""hi"""', b""])
        out.write(b"%d,%s,%.3f%s" % (i, text, rnd.random(), b"\r\n" if i % 2 else b"\n"))
        if i % 41 == 0:
            out.write(b"\n")
        if i % 59 == 0:
            out.write(b"%dr,ragged\n" % i)
        if i % 67 == 0:
            out.write(b"%db,\xff\xfe,1\n" % i)
    path.write_bytes(out.getvalue())
    return path


def _jsonl(path, n=300):
    lines = []
    for i in range(n):
        lines.append(json.dumps({"id": i, "text": "a\nb" if i % 3 else "c"}) if i % 23 else "not json")
    path.write_text("\n".join(lines) + "\n")
    return path


def _key(table, quarantined):
    import pyarrow as pa

    from lakefill.transforms.io import ROW_ID

    rows = sorted(zip(*(table.column(c).to_pylist() for c in [ROW_ID] + [c for c in table.column_names if c != ROW_ID])))
    bad = sorted((q.row_id, q.reason) for q in quarantined)
    assert isinstance(table, pa.Table)
    return rows, bad


@pytest.mark.parametrize("make", [_bad_csv, _jsonl], ids=["csv", "jsonl"])
def test_the_same_file_in_1_3_and_17_splits_gives_the_same_rows_ids_and_reasons(tmp_path, make, monkeypatch):
    import pyarrow as pa

    from lakefill.transforms import reads as lfio

    monkeypatch.setattr(lfio, "MIN_SPLIT_BYTES", 1)  # split a small file as a large one would be

    from lakefill.transforms.io import iter_raw
    from lakefill.transforms.reads import UnitKind, plan_reads, read_unit

    path = make(tmp_path / ("t.csv" if make is _bad_csv else "t.jsonl"))
    chunks = list(iter_raw(str(path), batch_rows=64))
    whole = _key(pa.concat_tables([c.table for c in chunks]), [q for c in chunks for q in c.quarantined])
    assert whole[1] and any("line" in reason for _, reason in whole[1])
    for n in (1, 3, 17):
        units = plan_reads(str(path), 64, min_units=n)
        assert len(units) == n and all(u.kind is (UnitKind.WHOLE_FILE if n == 1 else UnitKind.BYTE_RANGE) for u in units)
        parts = [c for u in units for c in read_unit(u, 64)]
        assert _key(pa.concat_tables([c.table for c in parts]), [q for c in parts for q in c.quarantined]) == whole, n


def test_beam_and_spark_read_a_split_file_as_the_core_reader_does(tmp_path, spark, monkeypatch):
    import apache_beam as beam
    import pyarrow as pa
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from lakefill.transforms import spark as lf
    from lakefill.transforms.beam import QUARANTINE, ReadRaw
    from lakefill.transforms import reads as lfio
    from lakefill.transforms.io import ROW_ID, iter_raw

    monkeypatch.setattr(lfio, "MIN_SPLIT_BYTES", 1)  # planned in this process (Beam's Direct runner, Spark's driver)
    path = str(_bad_csv(tmp_path / "t.csv"))
    chunks = list(iter_raw(path, batch_rows=64))
    table = pa.concat_tables([c.table for c in chunks])
    ids = sorted(table.column(ROW_ID).to_pylist())
    bad = sorted((q.row_id, q.reason) for c in chunks for q in c.quarantined)
    for n in (3, 17):
        with TestPipeline() as p:
            out = p | ReadRaw(path, batch_rows=64, min_units=n)
            got = out.main | beam.FlatMap(lambda t: t.column(ROW_ID).to_pylist())
            texts = out.main | beam.FlatMap(lambda t: t.column("text").to_pylist())
            q = out[QUARANTINE] | beam.FlatMap(lambda qs: [(r.row_id, r.reason) for r in qs])
            assert_that(got, equal_to(ids), label=f"ids{n}")
            assert_that(texts, equal_to(table.column("text").to_pylist()), label=f"texts{n}")
            assert_that(q, equal_to(bad), label=f"bad{n}")
        df = lf.read_raw(spark, path, table.schema, batch_rows=64, min_tasks=n).toPandas()
        held = df[lf.Q_REASON].notna()
        assert sorted(df.loc[~held, ROW_ID]) == ids
        assert sorted(zip(df.loc[held, ROW_ID], df.loc[held, lf.Q_REASON])) == bad
        assert sorted(df.loc[~held, "text"]) == sorted(table.column("text").to_pylist())


def test_a_small_file_is_one_read_unit_whatever_the_engine_asks(tmp_path):
    from lakefill.transforms.reads import UnitKind, plan_reads

    path = _bad_csv(tmp_path / "t.csv")
    assert [u.kind for u in plan_reads(str(path), 64, min_units=8)] == [UnitKind.WHOLE_FILE]  # under 1 MiB: one task
