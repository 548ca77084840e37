"""Servers for trying lakefill on a lake without a cloud account (and for lakefill's own tests)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

__all__ = ["LocalServer", "S3Server", "SparkCluster"]


class LocalServer:
    """A server process on 127.0.0.1, on a free port, started by the constructor (which waits
    until ``ready``) and stopped by ``stop`` (or at the end of a ``with`` block). Subclasses give
    the ``command`` for a port and, if a TCP connection is not enough, ``ready``."""

    name = "server"
    start_seconds = 60

    def __init__(self, log: "str | Path | None" = None):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._log = open(log, "wb") if log else subprocess.DEVNULL
        self._proc = subprocess.Popen(self.command(self.port), stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + self.start_seconds
        while not self.ready():
            if self._proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start on 127.0.0.1:{self.port} (log: {log})")
            time.sleep(0.2)

    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def _answers(self, url: str) -> bool:
        try:
            urllib.request.urlopen(url, timeout=2)
            return True
        except OSError:
            return False

    def stop(self) -> None:
        """Asked to end, then killed (Azurite's node may not exit on SIGTERM)."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=30)
        if hasattr(self._log, "close"):
            self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class S3Server(LocalServer):
    """An S3-protocol server on 127.0.0.1 (moto's server mode), in a process of its own, for
    trying lakefill on a lake without a cloud account and for lakefill's tests. Not a thread of
    the calling process: a deltalake call that holds the GIL would starve it.

        with S3Server() as s3:
            root = s3.bucket("lake")           # s3://lake
            job = {..., "output": f"{root}/out", "storage_options": s3.options}
    """

    name = "the S3 server (moto)"
    SECRET = "PLANTED-SECRET-7f3a9c"  # the tests check that it never shows in a log, a report or an error

    def __init__(self, log: "str | Path | None" = None):
        try:
            import moto.server  # noqa: F401
        except ImportError as err:
            raise RuntimeError("S3Server needs moto with its server: pip install 'moto[s3]' flask flask-cors") from err
        super().__init__(log)
        self.options = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true",
                        "AWS_ACCESS_KEY_ID": "lakefill-test", "AWS_SECRET_ACCESS_KEY": self.SECRET}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]

    def ready(self) -> bool:
        return self._answers(self.endpoint + "/moto-api/")

    def bucket(self, name: str) -> str:
        """A new bucket; its URI."""
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http", region="us-east-1",
                          access_key="lakefill-test", secret_key=self.SECRET,
                          allow_bucket_creation=True).create_dir(name)
        return f"s3://{name}"


# -- a real Spark standalone cluster: one master, workers, each its own process ------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _json(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


class SparkCluster:
    """A Spark standalone cluster on 127.0.0.1: one master and ``workers`` workers (``cores``
    cores, 2 GiB each; ``worker_opts``: their SPARK_WORKER_OPTS), each its own process, run by pyspark's own ``spark-class``; executors run this
    interpreter unless the job says otherwise. ``url`` is the master's; ``env`` (plus ``extra_env``)
    is what the processes were started with. For tests and for trying a cluster deployment."""

    def __init__(self, root: Path, *, workers: int = 2, cores: int = 1, worker_opts: str = "",
                 extra_env: dict | None = None):
        import pyspark

        self.spark_class = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
                    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(extra_env or {})}
        if worker_opts:  # the workers' own settings, e.g. the GPUs they offer (spark.worker.resource.gpu.*)
            self.env["SPARK_WORKER_OPTS"] = worker_opts
        self.port, self.ui = _free_port(), _free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.master = self._start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                  "--port", str(self.port), "--webui-port", str(self.ui))
        self._wait(lambda s: True, what="master")
        self.workers = [self._start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", self.url, "--host",
                                    "127.0.0.1", "--cores", str(cores), "--memory", "2g", "--webui-port", "0",
                                    "--work-dir", str(root / f"work{i}")) for i in range(workers)]
        self._wait(lambda s: s["aliveworkers"] == workers, what=f"{workers} workers")

    def _start(self, name, cls, *args):
        log = open(self.root / f"{name}.log", "w")
        return subprocess.Popen([self.spark_class, cls, *args], stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)

    def _wait(self, ok, what, timeout=90):
        end = time.time() + timeout
        while time.time() < end:
            try:
                if ok(_json(f"http://127.0.0.1:{self.ui}/json/")):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the standalone cluster's {what} did not come up; see {self.root}")

    def kill_worker(self, i):
        """The worker and the executor it launched die, as when a machine is lost."""
        os.killpg(self.workers[i].pid, signal.SIGKILL)
        for pid in _children(self.workers[i].pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self):
        for p in [*self.workers, self.master]:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(stat.parent.name)
            out += [child, *_children(child)]
    return out
