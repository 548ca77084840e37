"""The wheel installs one namespace, ``lakefill``: no top-level ``transforms``, ``models``,
``pipelines`` or ``benchmarks`` that could shadow (or be shadowed by) another project's on a
Dataflow worker, a Spark executor or an Airflow scheduler."""

import site
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, text=True)
    (path,) = out.glob("lakefill-*.whl")
    return path


def test_the_wheel_holds_one_namespace_and_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"lakefill"}, tops
    for need in ("lakefill/transforms/beam.py", "lakefill/models/codec.py", "lakefill/pipelines/cli.py",
                 "lakefill/schema.py", "lakefill/errors.py", "lakefill/pipelines/examples/customers.csv",
                 "lakefill/transforms/_static/bootstrap-4.3.1.min.css", "lakefill/pipelines/evaluate.py",
                 "lakefill/pipelines/commands/run.py", "lakefill/pipelines/report_checks.py"):
        assert need in names, need
    assert not any(n.startswith(("benchmarks/", "tests/")) for n in names)


def test_the_wheel_installed_in_an_empty_venv_runs(wheel, tmp_path):
    """The wheel goes into a new, empty venv (no deps); the pinned dependencies are borrowed from
    this environment's site-packages through a .pth line, where this checkout's editable install
    is not active. Run from a folder outside the checkout, so nothing of the repository is on
    the path."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in site.getsitepackages() if "site-packages" in p]
    (tmp_path / "venv" / purelib.split(str(venv) + "/", 1)[1] / "zz_deps.pth").write_text("\n".join(deps) + "\n")
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    help_ = subprocess.run([str(venv / "bin" / "lakefill"), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert help_.returncode == 0 and "usage: lakefill" in help_.stdout, help_.stderr
    code = ("import lakefill.transforms.beam, lakefill.transforms.spark, lakefill.pipelines.cli, lakefill.models.codec\n"
            "import lakefill, sys\n"
            "assert lakefill.__file__.startswith(sys.prefix), lakefill.__file__\n"
            "for name in ('transforms', 'models', 'pipelines', 'benchmarks'):\n"
            "    try:\n"
            "        __import__(name)\n"
            "    except ImportError:\n"
            "        continue\n"
            "    raise SystemExit(f'a top-level {name!r} is importable')\n"
            "print('ok')\n")
    imported = subprocess.run([str(py), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert imported.returncode == 0 and imported.stdout.strip().endswith("ok"), imported.stderr[-3000:]


def test_models_import_nothing_from_transforms_or_pipelines():
    """Imports go one way: pipelines -> transforms -> models -> lakefill (the base); and nothing
    imports the folders by their top-level names (they exist only as lakefill.*)."""
    import ast

    top = ("transforms", "models", "pipelines", "benchmarks")
    for folder in ("transforms", "models", "pipelines", "lakefill"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                for mod in mods:
                    assert mod.split(".")[0] not in top, f"{path.relative_to(ROOT)} imports {mod}"

    for folder, banned in (("models", ("lakefill.transforms", "lakefill.pipelines")),
                           ("transforms", ("lakefill.pipelines",)),
                           ("lakefill", ("lakefill.transforms", "lakefill.pipelines", "lakefill.models"))):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for mod in mods:
                    assert not mod.startswith(banned), f"{path.relative_to(ROOT)} imports {mod}"
