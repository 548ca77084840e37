"""Protocol D's extended figures (benchmarks/throughput.py) and the GPU script: what can be
checked on a CPU (the figures' functions, the argument handling; the GPU runs need a GPU)."""

import subprocess
import sys

import pytest

from benchmarks.throughput import flops_per_row, main, matmul_rate
from conftest import EXAMPLES, ROOT


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_the_model_s_flops_per_row_and_the_machine_s_matmul_rate(demo_model):
    from lakefill.pipelines.config import JobConfig
    from lakefill.pipelines.launcher import plan_for, prepare
    from lakefill.transforms.impute import Imputer
    from lakefill.transforms.plan import Runtime, run_steps

    cfg = JobConfig.model_validate({"input": str(EXAMPLES / "customers.csv"), "model": str(demo_model),
                                    "schema": str(EXAMPLES / "customers.schema.yaml"), "output": "/unused"})
    prep = prepare(cfg, log=lambda *_: None)
    imputer = Imputer(prep.artifact, device="cpu")
    head = [s for s in plan_for(prep).steps if s.name in ("detect", "validate_pre")]
    batch = run_steps(head, prep.sample.table, Runtime(lambda: imputer)).table
    per_row = flops_per_row(imputer, batch)
    # at least one multiply-add per weight of the networks' first layers, per row
    weights = sum(p.numel() for p in imputer.artifact.model.parameters() if p.dim() == 2)
    assert per_row >= weights and flops_per_row(imputer, batch.slice(0, 50)) == pytest.approx(per_row, rel=0.05)
    assert matmul_rate("cpu", n=256, repeats=2) > 1e6


@pytest.mark.skipif(_cuda(), reason="this machine has a GPU: the refusal cannot be seen here")
def test_device_gpu_is_refused_before_any_work_without_a_gpu(capsys):
    with pytest.raises(SystemExit) as err:
        main(["--engine", "core", "--rows", "1000", "--device", "gpu"])
    assert err.value.code == 2 and "torch sees no CUDA GPU" in capsys.readouterr().err
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "1000"], capture_output=True, text=True,
                         env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode != 0 and "torch sees no CUDA GPU" in out.stderr


def test_the_device_flag_takes_cpu_or_gpu_only(capsys):
    with pytest.raises(SystemExit) as err:
        main(["--engine", "core", "--device", "tpu"])
    assert err.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err


def test_the_bf16_check_scores_the_filled_cells_against_the_truth():
    """``--bf16``'s RMSE: only the cells the fill lists in ``_lf_imputed``, each column on the
    truth's min-max scale (a wrong filled cell counts, a wrong observed cell does not)."""
    import pyarrow as pa

    from benchmarks.throughput import _fill_rmse

    truth = pa.table({"a": pa.array([0, 10, 20, 30], pa.int64()), "b": pa.array([0, 1, 2, 3], pa.int64())})
    imputed = pa.array([["a"], [], ["a", "b"], []], pa.list_(pa.string()))
    exact = truth.append_column("_lf_imputed", imputed)
    assert _fill_rmse(exact, truth) == 0.0
    off = pa.table({"a": pa.array([3, 99, 20, 30], pa.int64()), "b": pa.array([0, 1, 5, 3], pa.int64()),
                    "_lf_imputed": imputed})  # row 1's a is wrong but observed: not scored
    # a: (3 - 0) / 30 on row 0, 0 on row 2; b: (5 - 2) / 3 on row 2
    assert _fill_rmse(off, truth) == pytest.approx(((0.1 ** 2 + 0 + 1.0) / 3) ** 0.5)


def test_the_gpu_script_times_bf16_on_both_devices():
    text = (ROOT / "benchmarks" / "gpu.sh").read_text()
    assert '--device "$device" --bf16' in text and "for device in gpu cpu" in text


def test_the_spark_gpu_cluster_flag_is_for_spark_only(capsys):
    with pytest.raises(SystemExit) as err:
        main(["--engine", "core", "--rows", "1000", "--spark-gpu-cluster"])
    assert err.value.code == 2 and "--spark-gpu-cluster needs --engine spark" in capsys.readouterr().err
