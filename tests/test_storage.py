"""The lake on object storage: jobs whose every path is s3:// on a real S3 server on loopback
(moto's server mode), on the local, Beam and Spark engines, and the storage layer's refusals."""

import json

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from conftest import EXAMPLES
from lakefill.errors import ConfigError
from lakefill.pipelines.config import JobConfig
from lakefill.transforms.io import ROW_ID
from lakefill.transforms.storage import Location, StorageError, redact

ROWS, BAD = 602, {600, 601}


def _read(uri, options):
    loc = Location(uri, options)
    path, opts = loc.delta()
    return DeltaTable(path, storage_options=opts).to_pyarrow_table().sort_by(ROW_ID)


STORES = ("s3", "azure")
ENGINES = ("local", "beam", "spark")


def _secret(server) -> str:
    return server.SECRET if hasattr(server, "SECRET") else server.KEY


@pytest.fixture(scope="module")
def lakes(request, demo_model):
    """Per store, a bucket holding the demo's input, schema and model: nothing of the job on local disk."""
    out = {}
    for name in STORES:
        server = request.getfixturevalue(name)
        root = server.bucket("lake")
        Location(f"{root}/raw/customers.csv", server.options).upload(EXAMPLES / "customers.csv")
        Location(f"{root}/schemas/customers.yaml", server.options).upload(EXAMPLES / "customers.schema.yaml")
        Location(f"{root}/models/customers", server.options).upload(demo_model)
        out[name] = (server, root)
    return out


def _job(server, lake, out: str, **extra) -> JobConfig:
    return JobConfig.model_validate({"input": f"{lake}/raw/customers.csv", "schema": f"{lake}/schemas/customers.yaml",
                                     "model": f"{lake}/models/customers", "output": f"{lake}/{out}",
                                     "storage_options": server.options, "batch_size": 128, **extra})


def _run(engine, job, request):
    if engine == "local":
        from lakefill.pipelines.local_job import run_local

        return run_local(job, log=lambda *_: None)
    if engine == "beam":
        from lakefill.pipelines.beam_pipeline import run_beam

        return run_beam(job, ["--direct_num_workers=1"], log=lambda *_: None)
    spark = request.getfixturevalue("spark")
    from lakefill.pipelines.spark_job import run_spark

    return run_spark(job, spark=spark, log=lambda *_: None)


@pytest.fixture(scope="module")
def runs(lakes, request):
    """The demo job, every path on the store, on every engine and store."""
    out = {}
    for store, (server, lake) in lakes.items():
        for engine in ENGINES:
            job = _job(server, lake, f"out-{engine}", run_id=f"{store}-{engine}")
            out[store, engine] = (server, job, _run(engine, job, request))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("engine", ENGINES)
def test_a_job_with_every_path_on_the_store_writes_every_row_once(runs, store, engine):
    server, job, outcome = runs[store, engine]
    assert outcome.table.startswith(job.output) and "://" in outcome.table and outcome.committed
    table, quarantine = _read(outcome.table, server.options), _read(outcome.quarantine, server.options)
    ids = table.column(ROW_ID).to_pylist() + quarantine.column(ROW_ID).to_pylist()
    assert sorted(ids) == list(range(ROWS)) and set(quarantine.column(ROW_ID).to_pylist()) == BAD
    report = json.loads(Location(outcome.report, server.options).read_text())
    assert report["counts"]["rows_in"] == ROWS == report["counts"]["rows_written"] + report["counts"]["rows_quarantined"]
    assert report["engine"] == engine and report["table"] == outcome.table
    names = {f.name for f in (job.out / "reports" / job.run_id).walk()}
    assert {"report.json", "report.html", "index.html"} <= names  # the run report and the Data Docs, on the store
    # what a person reads, nothing of GX's working state, no per-run copy of fonts or styles
    assert not names & {".gitignore", ".ge_store_backend_id", "great_expectations.yml"}, names
    assert not any(n.endswith((".otf", ".css")) for n in names), names
    assert (job.out / "reports" / "_assets" / "offline" / "bootstrap.min.css").exists()


@pytest.mark.slow
@pytest.mark.parametrize("store", STORES)
def test_the_engines_write_the_same_table_on_the_store(runs, store):
    server, _, local = runs[store, "local"]
    base = _read(local.table, server.options)
    for engine in ("beam", "spark"):
        other = _read(runs[store, engine][2].table, server.options)
        assert other.column_names == base.column_names
        for name in base.column_names:
            if name == "_lf_run_id":
                continue
            x, y = base.column(name), other.column(name)
            if pa.types.is_floating(x.type):
                assert max(abs(a - b) for a, b in zip(x.to_pylist(), y.to_pylist()) if a is not None) < 1e-6, name
            else:
                assert x.to_pylist() == y.to_pylist(), (engine, name)


@pytest.mark.slow
@pytest.mark.parametrize("store", STORES)
def test_a_rerun_with_the_same_run_id_commits_nothing_on_the_store(runs, store, request):
    server, job, outcome = runs[store, "local"]
    path, opts = Location(outcome.table, server.options).delta()
    before = DeltaTable(path, storage_options=opts).version()
    again = _run("local", job, request)
    assert not again.committed and DeltaTable(path, storage_options=opts).version() == before
    assert _read(outcome.table, server.options).num_rows == ROWS - len(BAD)
    # the second run's parts were removed: the table's folder holds the committed files only
    files = {f.name for f in job.out.join("table").walk() if f.name.endswith(".parquet")}
    assert files == {u.split("/")[-1] for u in DeltaTable(path, storage_options=opts).file_uris()}


@pytest.mark.slow
def test_no_secret_in_any_report_or_log(runs, capsys):
    for server, job, outcome in runs.values():
        secret = _secret(server)
        files = list(job.out.walk())
        assert any(f.name == "report.html" for f in files)
        for f in files:  # every object the run wrote: tables, logs, reports, Data Docs
            assert secret.encode() not in f.read_bytes(), f
        report = json.loads(Location(outcome.report, server.options).read_text())
        masked = {k for k, v in report["config"]["storage_options"].items() if v == "***"}
        assert masked == {k for k, v in server.options.items() if v == secret}
    out = capsys.readouterr()
    assert not any(_secret(s).split("/")[0] in out.out + out.err for s, _, _ in runs.values())


@pytest.mark.slow
def test_train_if_missing_writes_the_model_to_the_store(lakes):
    from lakefill.pipelines.local_job import run_local

    s3, lake = lakes["s3"]
    job = _job(s3, lake, "out-trained", model=f"{lake}/models/trained", train_if_missing=True, run_id="t1")
    outcome = run_local(job, log=lambda *_: None)
    assert outcome.committed and Location(f"{lake}/models/trained/manifest.json", s3.options).exists()


def test_a_missing_bucket_is_refused_before_any_work_naming_the_uri(lakes):
    from lakefill.pipelines.launcher import prepare

    s3, lake = lakes["s3"]
    with pytest.raises(ConfigError, match="s3://no-such-bucket/out.*bucket 'no-such-bucket' does not exist"):
        prepare(_job(s3, lake, "x", output="s3://no-such-bucket/out"), log=lambda *_: None)
    with pytest.raises(ConfigError, match="input s3://lake/raw/nothing-here.csv does not exist"):
        prepare(_job(s3, lake, "x", input=f"{lake}/raw/nothing-here.csv"), log=lambda *_: None)


def test_an_output_that_holds_other_files_is_refused(lakes):
    from lakefill.pipelines.launcher import prepare

    s3, lake = lakes["s3"]
    Location(f"{lake}/not-delta/table/notes.txt", s3.options).write_text("someone else's")
    with pytest.raises(ConfigError, match=r"s3://lake/not-delta/table holds files but is not a Delta table"):
        prepare(_job(s3, lake, "not-delta"), log=lambda *_: None)
    assert not Location(f"{lake}/not-delta/table/_delta_log", s3.options).is_dir()


def test_an_unknown_scheme_or_a_uri_without_bucket_is_refused():
    with pytest.raises(StorageError, match=r"ftp://x/y: unknown storage scheme 'ftp://'"):
        Location("ftp://x/y")
    with pytest.raises(StorageError, match="no bucket"):
        Location("s3:///key")


def test_locations_join_and_map_their_options():
    loc = Location("s3://b/lake", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_SECRET_ACCESS_KEY": "s"})
    assert str(loc / "table" / "_delta_log") == "s3://b/lake/table/_delta_log" and loc.path == "b/lake"
    uri, opts = loc.delta()
    assert uri == "s3://b/lake" and opts["aws_allow_http"] == "true" and opts["aws_endpoint_url"] == "http://127.0.0.1:9"
    assert Location("gs://b/k").family == "gs" and Location("abfss://c@acct.dfs.core.windows.net/k").path == "c/k"
    assert redact({"AWS_SECRET_ACCESS_KEY": "s", "AWS_ACCESS_KEY_ID": "id", "AWS_SESSION_TOKEN": "t",
                   "AZURE_STORAGE_ACCOUNT_KEY": "k", "AWS_REGION": "r"}) == {
        "AWS_SECRET_ACCESS_KEY": "***", "AWS_ACCESS_KEY_ID": "id", "AWS_SESSION_TOKEN": "***",
        "AZURE_STORAGE_ACCOUNT_KEY": "***", "AWS_REGION": "r"}


def test_the_storage_layer_on_gcs_reads_inputs_writes_parts_and_moves_models(gcs, demo_model, monkeypatch):
    """On fake-gcs-server (pyarrow's GcsFileSystem): the input is read, parts are written and
    removed, a model folder goes up and loads back hash-checked. The Delta commit is not tested
    on GCS here: deltalake's object_store uploads with the XML API, which the emulator refuses."""
    from lakefill.schema import load_schema
    from lakefill.transforms.impute import load_model_at
    from lakefill.transforms.io import iter_raw, read_raw
    from lakefill.transforms.reads import ReadUnit, UnitKind, plan_reads
    from lakefill.transforms.lake import part_path, write_part

    root = Location(gcs.bucket("lake"), gcs.options)
    (root / "raw" / "customers.csv").upload(EXAMPLES / "customers.csv")
    local = read_raw(EXAMPLES / "customers.csv")
    remote = read_raw(root / "raw" / "customers.csv")
    assert remote.table.equals(local.table) and [q.reason for q in remote.quarantined] == [
        q.reason for q in local.quarantined]
    assert sum(c.rows_in for c in iter_raw(root / "raw" / "customers.csv", batch_rows=100)) == ROWS
    assert plan_reads(str(root / "raw" / "customers.csv"), 100, options=gcs.options) == [
        ReadUnit("gs://lake/raw/customers.csv", UnitKind.WHOLE_FILE, 0)]
    # the file in byte ranges, each read by range requests: the rows and reasons of the local read
    from lakefill.transforms import reads
    from lakefill.transforms.reads import read_unit

    monkeypatch.setattr(reads, "MIN_SPLIT_BYTES", 1)
    units = plan_reads(str(root / "raw" / "customers.csv"), 100, min_units=3, options=gcs.options)
    parts = [c for u in units for c in read_unit(u, 100, options=gcs.options)]
    assert len(units) == 3 and pa.concat_tables([c.table for c in parts]).equals(local.table)
    assert [q.reason for c in parts for q in c.quarantined] == [q.reason for q in local.quarantined]
    actions = write_part(local.table, root / "t", partition_by=["region"])
    files = sorted(f.path for f in (root / "t").walk())
    assert files == sorted(part_path(root / "t", a).path for a in actions) and len(files) >= 3
    for a in actions:
        part_path(root / "t", a).remove()
    assert list((root / "t").walk()) == []
    (root / "models" / "m").upload(demo_model)
    schema = load_schema(EXAMPLES / "customers.schema.yaml")
    artifact = load_model_at(root / "models" / "m", schema=schema)
    assert artifact.codec.columns


def test_concurrent_writers_to_one_s3_table_each_commit_once(s3):
    """Twelve runs commit to one new table at once (deltalake's conditional put on the log;
    lakefill reads the table again and retries when a writer took the version): every run is in
    the table once, at its own version, and the reported versions are the log's."""
    from concurrent.futures import ThreadPoolExecutor

    from lakefill.transforms.lake import commit, write_part

    table = Location(s3.bucket("concurrent") + "/t", s3.options)

    def run(i):
        rows = pa.table({"run": [i] * 10, "x": list(range(10))})
        return commit(table, write_part(rows, table), rows.schema, run_id=f"r{i}", mode="append")

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(run, range(12)))
    assert all(r.committed for r in results)
    assert sorted(r.version for r in results) == list(range(12))
    path, opts = table.delta()
    dt = DeltaTable(path, storage_options=opts)
    assert sorted(dt.to_pyarrow_table().column("run").to_pylist()) == sorted(list(range(12)) * 10)
    history = {h["version"]: h["lakefill.run_id"] for h in dt.history()}
    assert {history[r.version] for r in results} == {f"r{i}" for i in range(12)}
    assert all(history[r.version] == r.run_id for r in results)


def test_refused_credentials_are_one_error_naming_the_uri_and_never_the_key(lakes, azure):
    """Azurite checks the shared-key signature: a wrong account key is refused before any work."""
    from lakefill.pipelines.launcher import prepare

    _, lake = lakes["azure"]
    wrong = {**azure.options, "AZURE_STORAGE_ACCOUNT_KEY": "V1JPTkctS0VZLW5vdC10aGUtcmVhbC1vbmU="}
    job = _job(azure, lake, "x").model_copy(update={"storage_options": wrong})
    with pytest.raises(ConfigError) as err:
        prepare(job, log=lambda *_: None)
    assert "az://lake/raw/customers.csv" in str(err.value)
    assert wrong["AZURE_STORAGE_ACCOUNT_KEY"] not in str(err.value) and azure.KEY not in str(err.value)


@pytest.mark.slow
def test_lakefill_run_on_the_command_line_with_every_path_on_s3(lakes, tmp_path):
    """The console script, as a user runs it, on a job YAML whose every path is s3://."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    s3, lake = lakes["s3"]
    job = _job(s3, lake, "out-cli", run_id="cli").model_dump(by_alias=True, exclude_none=True)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    lakefill = Path(sys.executable).parent / "lakefill"
    done = subprocess.run([str(lakefill), "run", str(tmp_path / "job.yaml"), "--engine", "beam"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert s3.SECRET not in done.stdout + done.stderr
    table = _read(f"{lake}/out-cli/table", s3.options)
    assert table.num_rows == ROWS - len(BAD)
    Location(f"{lake}/out-cli/reports/cli/report.html", s3.options).remove()
    done = subprocess.run([str(lakefill), "report", "--job", str(tmp_path / "job.yaml"), "--run-id", "cli", "--check"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "check passed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert "report: s3://lake/out-cli/reports/cli/report.html" in done.stdout
    assert Location(f"{lake}/out-cli/reports/cli/report.html", s3.options).exists()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_an_input_folder_on_s3_is_read_whole_with_row_ids_per_file(lakes, engine, request, tmp_path):
    """A folder of CSV parts (one empty, one header-only, a _SUCCESS marker) and a glob of them:
    every record of every file once, row ids ``file * FILE_ROWS + record``, on every engine."""
    from lakefill.transforms.io import FILE_ROWS

    s3, lake = lakes["s3"]
    lines = (EXAMPLES / "customers.csv").read_text().splitlines()
    header, body = lines[0], lines[1:]
    parts = {"part-0.csv": body[:250], "part-1.csv": body[250:], "part-2.csv": [], "part-3.csv": None}
    for name, rows in parts.items():
        text = "" if rows is None else "\n".join([header, *rows]) + "\n"
        Location(f"{lake}/parts/{name}", s3.options).write_text(text)
    Location(f"{lake}/parts/_SUCCESS", s3.options).write_text("")
    for input_ in (f"{lake}/parts", f"{lake}/parts/part-*.csv"):
        run_id = f"parts-{engine}-{'glob' if '*' in input_ else 'folder'}"
        job = _job(s3, lake, f"out-{run_id}", input=input_, run_id=run_id)
        outcome = _run(engine, job, request)
        table, quarantine = _read(outcome.table, s3.options), _read(outcome.quarantine, s3.options)
        ids = sorted(table.column(ROW_ID).to_pylist() + quarantine.column(ROW_ID).to_pylist())
        assert ids == list(range(250)) + [FILE_ROWS + r for r in range(len(body) - 250)], input_
        assert outcome.counts["rows_in"] == len(body)
