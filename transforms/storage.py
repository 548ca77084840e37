"""Where lakefill's data lives: one layer over local folders and object stores.

A location is a URI plus storage options:

    /data/in.csv, file:///data/in.csv      local disk
    s3://bucket/key                         S3 and its protocol (MinIO, moto, R2, ...)
    gs://bucket/key                         Google Cloud Storage
    abfs[s]://container@account.dfs.core.windows.net/key, az://container/key   Azure Blob / ADLS Gen2

``Location(uri, options)`` reads and writes bytes with ``pyarrow.fs`` (S3FileSystem,
GcsFileSystem, AzureFileSystem, LocalFileSystem), lists objects, and gives ``deltalake`` the
same URI and options (its object_store). Credentials come as each ecosystem has them (AWS
environment, profile or instance role; Google application default credentials; Azure
environment), and the job's ``storage_options`` map adds endpoints and flags, in
``deltalake``'s key names (``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ALLOW_HTTP``,
``AWS_ACCESS_KEY_ID``, ``GOOGLE_SERVICE_ACCOUNT``, ``AZURE_STORAGE_ACCOUNT_NAME``, ...,
any case). A secret never reaches a log line, an error or a report: ``redact`` masks every
option whose name says key, secret, token, password, signature or sas.

Outside this module no data path goes through ``pathlib``.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from lakefill.errors import ConfigError

__all__ = ["Location", "StorageError", "redact", "SECRET_WORDS", "SCHEMES", "as_location"]

SCHEMES = ("file", "s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "azure")
SECRET_WORDS = ("secret", "key", "token", "password", "signature", "sas", "credential")


class StorageError(ConfigError):
    """A location that cannot be used: unknown scheme, missing bucket, refused credentials, ..."""


def redact(options: dict | None) -> dict:
    """Storage options fit to print: every value whose name names a secret is masked."""
    out = {}
    for k, v in (options or {}).items():
        secret = any(w in str(k).lower() for w in SECRET_WORDS) and "id" not in str(k).lower().split("_")[-1:]
        out[k] = "***" if secret and v not in (None, "") else v
    return out


def _opts(options: dict | None) -> dict[str, str]:
    return {str(k).lower(): ("" if v is None else str(v)) for k, v in (options or {}).items()}


def _truthy(v: str | None) -> bool:
    return str(v).lower() in ("1", "true", "yes", "on")


@lru_cache(maxsize=64)
def _filesystem(scheme: str, frozen: tuple) -> pafs.FileSystem:
    o = dict(frozen)
    if scheme == "file":
        return pafs.LocalFileSystem()
    if scheme == "s3":
        endpoint = o.get("aws_endpoint_url") or o.get("aws_endpoint") or o.get("endpoint_url") or os.environ.get(
            "AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kw = {}
        if endpoint:
            parts = urlsplit(endpoint)
            kw["endpoint_override"] = parts.netloc or parts.path
            kw["scheme"] = parts.scheme or ("http" if _truthy(o.get("aws_allow_http")) else "https")
        region = o.get("aws_region") or o.get("aws_default_region") or o.get("region")
        if region:
            kw["region"] = region
        if o.get("aws_access_key_id"):
            kw["access_key"] = o["aws_access_key_id"]
            kw["secret_key"] = o.get("aws_secret_access_key", "")
            if o.get("aws_session_token"):
                kw["session_token"] = o["aws_session_token"]
        if _truthy(o.get("aws_skip_signature")):
            kw["anonymous"] = True
        return pafs.S3FileSystem(**kw)
    if scheme == "gs":
        kw = {}
        endpoint = o.get("google_endpoint_url") or o.get("endpoint_url") or os.environ.get("STORAGE_EMULATOR_HOST")
        if endpoint:
            parts = urlsplit(endpoint if "://" in endpoint else "http://" + endpoint)
            kw["endpoint_override"] = parts.netloc
            kw["scheme"] = parts.scheme
        if _truthy(o.get("google_skip_signature")) or _truthy(o.get("anonymous")):
            kw["anonymous"] = True
        if o.get("google_project_id"):
            kw["project_id"] = o["google_project_id"]
        return pafs.GcsFileSystem(**kw)
    if scheme == "az":
        kw = {"account_name": o.get("azure_storage_account_name") or os.environ.get("AZURE_STORAGE_ACCOUNT_NAME", "")}
        key = o.get("azure_storage_account_key") or os.environ.get("AZURE_STORAGE_ACCOUNT_KEY")
        if key:
            kw["account_key"] = key
        endpoint = o.get("azure_storage_endpoint") or o.get("endpoint_url")
        if endpoint:
            parts = urlsplit(endpoint)
            kw["blob_storage_authority"] = kw["dfs_storage_authority"] = parts.netloc
            kw["blob_storage_scheme"] = kw["dfs_storage_scheme"] = parts.scheme
        return pafs.AzureFileSystem(**kw)
    raise StorageError(f"unknown storage scheme {scheme!r}")


def _split(uri: str) -> tuple[str, str, str]:
    """(family, bucket or '', key or local path). Families: file, s3, gs, az."""
    if "://" not in uri:
        return "file", "", str(Path(uri).expanduser().absolute())
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return "file", "", parts.path
    if scheme not in SCHEMES:
        raise StorageError(f"{uri}: unknown storage scheme {scheme + '://'!r}; lakefill reads and writes local "
                           f"paths, file://, s3://, gs://, abfs[s]:// and az://")
    family = {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az", "azure": "az"}.get(scheme, scheme)
    bucket = parts.netloc.split("@", 1)[0] if family == "az" else parts.netloc
    if not bucket:
        raise StorageError(f"{uri}: no bucket (or container) in the URI")
    return family, bucket, parts.path.lstrip("/")


@dataclass(frozen=True)
class Location:
    """A file or folder on local disk or an object store, and the options to reach it."""

    uri: str
    options: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        uri = str(self.uri)
        family, bucket, key = _split(uri)
        if family == "file" and "://" not in uri:
            uri = key  # absolute local path
        object.__setattr__(self, "uri", uri.rstrip("/") if len(uri) > 1 and family != "file" else uri)
        object.__setattr__(self, "options", dict(self.options or {}))

    # -- what it is ----------------------------------------------------------------------------

    @property
    def family(self) -> str:
        return _split(self.uri)[0]

    @property
    def is_local(self) -> bool:
        return self.family == "file"

    @property
    def path(self) -> str:
        """The path the pyarrow filesystem takes: ``bucket/key``, or the local path."""
        family, bucket, key = _split(self.uri)
        return key if family == "file" else posixpath.join(bucket, key) if key else bucket

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def stem(self) -> str:
        return self.name.split(".", 1)[0] if "." in self.name else self.name

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1].lower()

    @property
    def local_path(self) -> Path:
        if not self.is_local:
            raise StorageError(f"{self.uri} is not on local disk")
        return Path(self.path)

    @property
    def fs(self) -> pafs.FileSystem:
        return _filesystem(self.family, tuple(sorted(_opts(self.options).items())))

    def __str__(self) -> str:
        return self.uri

    def __truediv__(self, other: str) -> "Location":
        return self.join(other)

    def join(self, *parts: str) -> "Location":
        if self.is_local and "://" not in self.uri:
            return Location(str(Path(self.uri).joinpath(*parts)), self.options)
        return Location(posixpath.join(self.uri, *[str(p) for p in parts]), self.options)

    @property
    def parent(self) -> "Location":
        if self.is_local and "://" not in self.uri:
            return Location(str(Path(self.uri).parent), self.options)
        return Location(posixpath.dirname(self.uri), self.options)

    def delta(self) -> tuple[str, dict[str, str]]:
        """The URI and storage options for ``deltalake`` (its object_store reads the same keys)."""
        opts = _opts(self.options)
        if self.family == "s3":
            endpoint = opts.get("aws_endpoint_url") or opts.get("endpoint_url")
            if endpoint:
                opts["aws_endpoint_url"] = endpoint
                if endpoint.startswith("http://"):
                    opts.setdefault("aws_allow_http", "true")
            opts.pop("endpoint_url", None)
        if self.family == "gs":  # lakefill's own key (pyarrow's endpoint_override); object_store has none
            opts.pop("google_endpoint_url", None)
            opts.pop("endpoint_url", None)
        return (self.path if self.is_local else self.uri), opts

    # -- what is there -------------------------------------------------------------------------

    def info(self) -> pafs.FileInfo:
        """What is at this location (one request): its type (NotFound, File, Directory) and size."""
        try:
            return self.fs.get_file_info(self.path)
        except OSError as err:
            raise StorageError(f"{self.uri}: {_reason(err)}") from err

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        """A folder (on an object store: a prefix with objects under it)."""
        info = self.info()
        if info.type == pafs.FileType.Directory:
            return True
        if info.type == pafs.FileType.File or self.is_local:
            return False
        return bool(self.listdir())

    def size(self) -> int:
        return self.info().size

    def listdir(self) -> list["Location"]:
        """What is directly under this folder (sorted); nothing if it is not one."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True, recursive=False))
        except OSError as err:
            raise StorageError(f"{self.uri}: {_reason(err)}") from err
        return [self._child(i.path) for i in sorted(infos, key=lambda i: i.path)]

    def walk(self) -> Iterator["Location"]:
        """Every file under this folder, sorted."""
        for f, _ in self._files(self, None):
            yield f

    def listing(self) -> list[tuple["Location", pafs.FileInfo]]:
        """Every file under this folder, or that this glob matches, with its ``FileInfo`` (size,
        modification time) from the one listing, sorted."""
        if not any(c in self.uri for c in "*?["):
            return self._files(self, None)
        head, pattern = self.uri, []
        while any(c in head for c in "*?["):
            pattern.insert(0, posixpath.basename(head))
            head = posixpath.dirname(head)
        return self._files(Location(head, self.options), "/".join(pattern))

    @staticmethod
    def _files(base: "Location", pattern: str | None) -> list[tuple["Location", pafs.FileInfo]]:
        try:
            infos = base.fs.get_file_info(pafs.FileSelector(base.path, allow_not_found=True, recursive=True))
        except OSError as err:
            raise StorageError(f"{base.uri}: {_reason(err)}") from err
        return [(base._child(i.path), i) for i in sorted(infos, key=lambda i: i.path)
                if i.type == pafs.FileType.File and (pattern is None or fnmatch.fnmatch(base._relative(i.path), pattern))]

    def _child(self, fs_path: str) -> "Location":
        return self.join(self._relative(fs_path))

    def _relative(self, fs_path: str) -> str:
        """A filesystem path under this folder, relative to it ('/'-separated)."""
        return posixpath.relpath(fs_path, self.path)

    def glob(self) -> list["Location"]:
        """The files a glob in the last parts of the URI matches (``s3://b/in/*.csv``), sorted."""
        if not any(c in self.uri for c in "*?["):
            return [self]
        return [f for f, _ in self.listing()]

    # -- bytes ---------------------------------------------------------------------------------

    def open_input(self):
        try:
            return self.fs.open_input_file(self.path)
        except (OSError, FileNotFoundError) as err:
            raise StorageError(f"{self.uri}: {_reason(err)}") from err

    def open_output(self):
        self.parent.mkdir()
        try:
            return self.fs.open_output_stream(self.path)
        except OSError as err:
            raise StorageError(f"{self.uri}: {_reason(err)}") from err

    def read_bytes(self) -> bytes:
        with self.open_input() as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> "Location":
        with self.open_output() as f:
            f.write(data)
        return self

    def write_text(self, text: str, encoding: str = "utf-8") -> "Location":
        return self.write_bytes(text.encode(encoding))

    def mkdir(self) -> None:
        if self.is_local:
            Path(self.path).mkdir(parents=True, exist_ok=True)
        # an object store has no folders: a key's prefix exists once an object is under it

    def remove(self) -> None:
        """Deletes this file; nothing if it is not there."""
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            pass
        except OSError as err:
            if "not found" in str(err).lower() or "does not exist" in str(err).lower():
                return
            raise StorageError(f"{self.uri}: {_reason(err)}") from err

    def upload(self, local: Path) -> "Location":
        """A local file or folder copied here (a folder: every file under it)."""
        local = Path(local)
        if local.is_dir():
            for f in sorted(p for p in local.rglob("*") if p.is_file()):
                self.join(*f.relative_to(local).parts).write_bytes(f.read_bytes())
        else:
            self.write_bytes(local.read_bytes())
        return self

    def download(self, local: Path) -> Path:
        """This file, or every file under this folder, copied to ``local``."""
        local = Path(local)
        if self.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(self.read_bytes())
            return local
        for f in self.walk():
            target = local.joinpath(*self._relative(f.path).split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())
        return local

    def check_reachable(self) -> None:
        """The bucket (container) exists and the credentials are accepted: checked once, before
        any work, with an error that names the URI (and never an option's value)."""
        if self.is_local:
            return
        family, bucket, _ = _split(self.uri)
        try:
            info = self.fs.get_file_info(bucket)
        except OSError as err:
            raise StorageError(f"{self.uri}: cannot reach the {family} bucket {bucket!r}: {_reason(err)}") from err
        if info.type == pafs.FileType.NotFound:
            raise StorageError(f"{self.uri}: the bucket {bucket!r} does not exist (or these credentials cannot see it)")


def as_location(where: "str | Path | Location", options: dict | None = None) -> Location:
    if isinstance(where, Location):
        return where if options is None or where.options else Location(where.uri, options)
    return Location(str(where), options or {})


_SECRETISH = re.compile(r"(?i)(secret|signature|token|password|key)=[^&\s]+")


def _reason(err: BaseException) -> str:
    """An error's text without anything that looks like a credential."""
    return _SECRETISH.sub(r"\1=***", str(err)).strip().split("\n")[0][:400]
