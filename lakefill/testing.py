"""Servers for trying lakefill on a lake without a cloud account (and for lakefill's own tests)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["S3Server"]


class S3Server:
    """An S3-protocol server on 127.0.0.1 (moto's server mode), in a process of its own, for
    trying lakefill on a lake without a cloud account and for lakefill's tests. Not a thread of
    the calling process: a deltalake call that holds the GIL would starve it.

        with S3Server() as s3:
            root = s3.bucket("lake")           # s3://lake
            job = {..., "output": f"{root}/out", "storage_options": s3.options}
    """

    SECRET = "PLANTED-SECRET-7f3a9c"  # the tests check that it never shows in a log, a report or an error

    def __init__(self, log: "str | Path | None" = None):
        import socket
        import subprocess
        import sys
        import time
        import urllib.request

        try:
            import moto.server  # noqa: F401
        except ImportError as err:
            raise RuntimeError("S3Server needs moto with its server: pip install 'moto[s3]' flask flask-cors") from err
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        self._log = open(log, "wb") if log else subprocess.DEVNULL
        self._proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                      stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2)
                break
            except OSError:
                if self._proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"the S3 server did not start (log: {log})") from None
                time.sleep(0.2)
        self.options = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true",
                        "AWS_ACCESS_KEY_ID": "lakefill-test", "AWS_SECRET_ACCESS_KEY": self.SECRET}

    def bucket(self, name: str) -> str:
        """A new bucket; its URI."""
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=self.endpoint.split("://", 1)[1], scheme="http", region="us-east-1",
                          access_key="lakefill-test", secret_key=self.SECRET,
                          allow_bucket_creation=True).create_dir(name)
        return f"s3://{name}"

    def stop(self) -> None:
        import subprocess

        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=30)
        if hasattr(self._log, "close"):
            self._log.close()

    def __enter__(self) -> "S3Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
