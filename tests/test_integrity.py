"""Integrity and security of what lakefill writes and loads (hostile and odd inputs)."""

import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

import lakefill.transforms.lake as lake
from lakefill.errors import ModelError
from lakefill.models.config import AEConfig
from lakefill.models.artifact import _manifest_digest, load_artifact, save_artifact
from lakefill.models.training import fit_model
from lakefill.schema import TableSchema
from lakefill.transforms.lake import commit, write_part
from conftest import train_and_run

SCHEMA = TableSchema.model_validate({"name": "t", "columns": [
    {"name": "x", "type": "numeric", "impute": True},
    {"name": "y", "type": "numeric", "impute": True},
    {"name": "c", "type": "categorical", "impute": True, "categories": ["a", "b"]},
]})
TINY = AEConfig(hidden=16, depth=1, code=8, epochs=3, min_steps=0, patience=5, extra_sizes=(), random_state=0,
                without=("trees", "chained", "donors", "gaussian"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    table = pa.table({"x": x, "y": pa.array([None if i % 7 == 0 else 2 * v for i, v in enumerate(x)]),
                      "c": pa.array(["a" if v > 0 else "b" for v in x])})
    fitted = fit_model(table, SCHEMA, config=TINY)
    out = tmp_path_factory.mktemp("m") / "model"
    save_artifact(out, model=fitted.model, codec=fitted.codec, schema=SCHEMA, policy=None, config=TINY,
                  metrics={}, error_reference=1.0)
    return out


def _copy(model_dir: Path, to: Path) -> Path:
    to.mkdir()
    for f in model_dir.iterdir():
        (to / f.name).write_bytes(f.read_bytes())
    return to


# -- partitions -------------------------------------------------------------------------------

def test_a_partition_value_never_writes_outside_the_table(tmp_path):
    values = ["../../../../x", "a/b", "..", "\x01ctl", "50%", "naïve x"]
    t = pa.table({"id": list(range(len(values))), "p": values})
    root = tmp_path / "lake" / "t"
    actions = write_part(t, root, partition_by=["p"])
    files = [p for p in tmp_path.rglob("*.parquet")]
    assert len(files) == len(values) and all(p.resolve().is_relative_to(root.resolve()) for p in files)
    commit(root, actions, t.schema, run_id="r", partition_by=["p"])
    back = DeltaTable(str(root)).to_pyarrow_table().sort_by("id")
    assert back.column("p").to_pylist() == values  # the values come back exactly, and the table reads


# -- the artifact -----------------------------------------------------------------------------

def test_an_edited_manifest_is_refused(model_dir, tmp_path):
    d = _copy(model_dir, tmp_path / "m")
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["codec"]["center"] = {k: v + 1.0 for k, v in manifest["codec"]["center"].items()} \
        if "center" in manifest["codec"] else manifest["codec"]
    manifest["error_reference"] = 0.5
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="manifest .* was changed after training"):
        load_artifact(d)


def test_a_renamed_codec_column_is_refused_with_a_clear_error(model_dir, tmp_path):
    d = _copy(model_dir, tmp_path / "m")
    text = (d / "manifest.json").read_text().replace('"x"', '"renamed"')
    (d / "manifest.json").write_text(text)
    with pytest.raises(ModelError, match="sha256"):
        load_artifact(d)


def test_non_finite_weights_are_refused_even_under_matching_hashes(model_dir, tmp_path):
    import hashlib

    from safetensors.torch import load_file, save_file

    d = _copy(model_dir, tmp_path / "m")
    state = load_file(str(d / "weights.safetensors"))
    key = next(k for k, v in state.items() if k.startswith("members.") and v.is_floating_point() and v.numel() > 1)
    state[key][0] = float("nan")
    save_file(state, str(d / "weights.safetensors"))
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["weights_sha256"] = hashlib.sha256((d / "weights.safetensors").read_bytes()).hexdigest()
    manifest["artifact_sha256"] = _manifest_digest(manifest)
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="non-finite"):
        load_artifact(d)


@pytest.mark.parametrize("weights", ["../elsewhere/w.safetensors", "/etc/passwd", "sub/w.safetensors", ".."])
def test_the_weights_file_must_be_inside_the_model_folder(model_dir, tmp_path, weights):
    d = _copy(model_dir, tmp_path / "m")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "w.safetensors").write_bytes((d / "weights.safetensors").read_bytes())
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["weights"] = weights
    manifest["artifact_sha256"] = _manifest_digest(manifest)
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="must be a file name inside the model folder"):
        load_artifact(d)


# -- Spark workers' copy of the model ---------------------------------------------------------

def test_a_spark_worker_loads_the_broadcast_model_from_its_bytes_and_checks_them(model_dir, tmp_path, monkeypatch):
    import tempfile

    from lakefill.transforms import modelcache
    from lakefill.transforms import spark as lf

    class _Broadcast:
        def __init__(self, value):
            self.value = value

    files = {p.name: p.read_bytes() for p in sorted(model_dir.iterdir())}
    ref = lf.ModelRef(_Broadcast(files), lf._files_digest(files), SCHEMA.model_dump(by_alias=True), "cpu")
    bad = lf.ModelRef(_Broadcast({**files, "manifest.json": b"{}"}), ref.sha256, ref.schema, "cpu")
    with pytest.raises(RuntimeError, match="sha256"):
        lf._imputer(bad)
    # the bytes match the driver's hash but not the artifact's own: refused by the artifact check
    tampered = {**files, "weights.safetensors": files["weights.safetensors"][:-1] + b"\0"}
    with pytest.raises(ModelError, match="sha256"):
        lf._imputer(lf.ModelRef(_Broadcast(tampered), lf._files_digest(tampered), ref.schema, "cpu"))
    modelcache.clear()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    model = lf._imputer(ref)
    assert model.artifact.schema == SCHEMA and model is lf._imputer(ref)
    assert modelcache.take_loads() == 1
    assert not any((tmp_path / "tmp").iterdir())  # nothing written to disk


# -- concurrent first commits -----------------------------------------------------------------

def test_concurrent_first_commits_both_land_and_report_their_versions(tmp_path, monkeypatch):
    t1 = pa.table({"id": [1, 2]})
    t2 = pa.table({"id": [3]})
    uri = tmp_path / "t"
    a1, a2 = write_part(t1, uri), write_part(t2, uri)
    first = commit(uri, a1, t1.schema, run_id="one")
    real_open = lake.open_table
    calls = {"n": 0}

    def racing_open(u):  # the second writer looked before the first had created the table
        calls["n"] += 1
        return None if calls["n"] == 1 else real_open(u)

    monkeypatch.setattr(lake, "open_table", racing_open)
    second = commit(uri, a2, t2.schema, run_id="two")
    assert first.committed and second.committed and (first.version, second.version) == (0, 1)
    assert sorted(DeltaTable(str(uri)).to_pyarrow_table().column("id").to_pylist()) == [1, 2, 3]


# -- the Airflow DAG's params ------------------------------------------------------------------

def test_dag_params_never_become_shell_code():
    """The DAG runs no shell (no BashOperator, no bash_command): every engine's command is an
    argument list, and a param, hostile or not, is one argument (``--FIELD=VALUE``). Checked on
    the DAG's own source (its ``job_flags``, run here without Airflow; tests/test_deploy.py
    renders every task's command with Airflow itself)."""
    import ast

    source = (Path(__file__).resolve().parents[1] / "deploy" / "airflow" / "dags" / "lakefill_dag.py").read_text()
    tree = ast.parse(source)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.arg for n in ast.walk(tree) if isinstance(n, ast.keyword)}
    assert not names & {"BashOperator", "bash_command", "shell"}, names & {"BashOperator", "bash_command", "shell"}
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "job_flags")
    scope = {"json": json, "JOB_FIELDS": ("job", "input", "schema", "model", "output", "run_id")}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), "lakefill_dag.py", "exec"), scope)
    hostile = "x; touch /tmp/pwned $(id) `id` 'q' \"d\""
    flags = scope["job_flags"]({"job": hostile, "input": hostile, "model": hostile, "output": hostile,
                                "schema": "", "job_options": {"partition_by": [hostile, "b"], "refine": False},
                                "storage_options": {"K": hostile}}, hostile)
    args = [f"--{k}={v}" for k, v in flags.items()]
    assert f"--input={hostile}" in args and f"--run_id={hostile}" in args and "--refine=false" in args
    assert f"--partition_by={hostile},b" in args and "schema" not in flags
    assert json.loads(flags["storage_options"]) == {"K": hostile}


# -- exact decimals ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("source, engine", [("parquet", "local"), ("csv", "local"), ("parquet", "beam"),
                                            ("parquet", "spark")])
def test_decimal_columns_stay_exact_end_to_end(tmp_path, source, engine, request):
    """A Parquet decimal128(20, 2) column, or 17-digit numbers in a CSV, keep every given value
    to the last digit through the stage, on the engines; the imputed cells are decimals too."""
    rng = np.random.default_rng(3)
    amounts = [Decimal(f"{v:.2f}") for v in rng.uniform(1e14, 9e14, 150)]  # 17 significant digits
    other = rng.normal(size=150)
    if source == "parquet":
        table = pa.table({"amount": pa.array([None if i % 10 == 0 else a for i, a in enumerate(amounts)],
                                             pa.decimal128(20, 2)), "other": other})
        path = tmp_path / "money.parquet"
        pq.write_table(table, path)
    else:
        lines = ["amount,other"] + [f"{'' if i % 10 == 0 else a},{o:.6f}" for i, (a, o) in enumerate(zip(amounts, other))]
        path = tmp_path / "money.csv"
        path.write_text("\n".join(lines) + "\n")
    outcome, schema = train_and_run(path, tmp_path, engine, name="money", run_id="d", request=request, config=TINY)
    amount = schema.column("amount")
    assert amount.type == "decimal" and amount.scale == 2 and amount.precision == (20 if source == "parquet" else 17)
    assert outcome.counts["rows_quarantined"] == 0
    out = DeltaTable(outcome.table).to_pyarrow_table().sort_by("_lf_row_id")
    assert pa.types.is_decimal(out.schema.field("amount").type) and out.schema.field("amount").type.scale == 2
    got = out.column("amount").to_pylist()
    for i, a in enumerate(amounts):
        if i % 10:
            assert got[i] == a, (i, got[i], a)  # every given value exact to the cent
        else:
            assert isinstance(got[i], Decimal) and got[i] == got[i].quantize(Decimal("0.01"))
