"""One model lifecycle for every engine: a process's loaded models, keyed by the artifact's hash
and the device.

The split follows Beam's own: a ``ModelSource`` says where the model comes from and how to load
it (a folder or object-store URI with its storage options, or the files as bytes, as a Spark
broadcast holds them); ``cached`` keeps one ``LoadedModel`` per (artifact hash, device, job
schema) for the life of the worker process (the newest ``MAX_MODELS``), loads it once, and counts the loads for the run's
``model_loads`` counter (``take_loads``). The local loop, Beam's ``LakefillModelHandler`` (its
RunInference, the refine step and the failure isolation) and Spark's tasks all go through it;
Beam's ``share`` (one model per machine, Beam's ``MultiProcessShared``) wraps the same loader.

A ``LoadedModel`` is what a plan step calls: ``impute``, ``refine`` (with the job's reverse
settings, through the artifact's adapted networks where it has them) and ``take_load``. Every
method is one call, so a model shared by a machine's processes, reached through a proxy, works
the same way. ``Imputer`` (``lakefill.transforms.impute``) stays plain: impute and refine.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pyarrow as pa

from lakefill.models.artifact import artifact_digest, load_artifact
from lakefill.models.reverse import ReverseConfig
from lakefill.schema import TableSchema
from lakefill.transforms.impute import Imputer, resolve_device

__all__ = ["ModelSource", "LoadedModel", "cached", "load", "take_loads", "clear"]


class LoadedModel:
    """A loaded model as the plan's steps use it (one per process and artifact, ``cached``)."""

    def __init__(self, imputer: Imputer):
        self.imputer = imputer
        self._variants: dict[str, Imputer] = {}  # the same model with other reverse-training settings
        self._unreported_load = True

    @property
    def artifact(self):
        return self.imputer.artifact

    def impute(self, table: pa.Table, *, adapted: bool = False, precision: str = "fp32") -> pa.Table:
        return self.imputer.impute(table, adapted=adapted, precision=precision)

    def refine(self, table: pa.Table, *, reverse: dict | None = None, adapted_fill: bool = False) -> pa.Table:
        """The plan's refine step: ``reverse``, reverse-training settings other than the
        imputer's; the artifact's adapted networks refine the rows where it has them
        (``adapted_fill``: rows they filled are refined through them alone)."""
        imputer = self.imputer
        if reverse:
            key = json.dumps(reverse, sort_keys=True, default=str)
            if key not in self._variants:
                self._variants[key] = Imputer(imputer.artifact, reverse=ReverseConfig(**reverse), device=imputer.device)
            imputer = self._variants[key]
        adapted = imputer.artifact.adapted
        if adapted_fill and adapted is not None:
            return imputer.refine(table, model=adapted)
        return imputer.refine(table, adapted=adapted)

    def take_load(self) -> int:
        """1 the first time it is asked (this model's load, for ``model_loads``), then 0: a model
        shared by a machine's processes is counted once, by whichever process asks first."""
        first, self._unreported_load = self._unreported_load, False
        return int(first)


def _schema_digest(schema: TableSchema | dict | None) -> str:
    if schema is None:
        return ""
    data = schema.model_dump(mode="json", by_alias=True) if isinstance(schema, TableSchema) else schema
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``uri`` (a local folder or an object-store folder, read with
    ``options``) or ``files`` (its files as bytes); ``schema``: the job's (the model is refused
    if its columns differ); ``device``: auto / cpu / gpu / a torch name."""

    uri: str | None = None
    options: dict = field(default_factory=dict)
    files: Mapping[str, bytes] | None = None
    schema: dict | None = None
    device: str = "auto"

    def folder(self):
        if self.files is not None:
            return self.files
        from lakefill.transforms.storage import Location

        return Location(self.uri, self.options)

    def key(self, device: str | None = None) -> tuple[str, str, str]:
        """(artifact hash, device, schema hash): what the process's cache keeps one model per."""
        return (artifact_digest(self.folder()), device or resolve_device(self.device), _schema_digest(self.schema))

    def load(self, device: str | None = None) -> Imputer:
        schema = TableSchema.model_validate(self.schema) if self.schema is not None else None
        return Imputer(load_artifact(self.folder(), schema=schema), device=device or self.device)


_CACHE: dict[tuple, LoadedModel] = {}  # oldest first: a long-lived process keeps the newest MAX_MODELS
_LOCK = threading.Lock()
MAX_MODELS = 4
_UNCOUNTED = [0]  # loads in this process not yet counted in a run's model_loads


def cached(key: tuple, load: Callable[[], Imputer], *,
           share: Callable[[Callable[[], LoadedModel], str], LoadedModel] | None = None) -> LoadedModel:
    """The process's model for ``key``, loaded with ``load`` the first time. ``share``: a wrapper
    that serves one copy to every process of the machine (Beam's ``MultiProcessShared``, given
    the loader and a tag); its load is counted once, by the first process to ask."""
    key = tuple(key) + (share is not None,)
    with _LOCK:
        if key not in _CACHE:
            def make() -> LoadedModel:
                return LoadedModel(load())

            if share is not None:
                tag = "lakefill-model-" + hashlib.sha256(json.dumps(key[:3]).encode()).hexdigest()[:32]
                _CACHE[key] = share(make, tag)
            else:
                _CACHE[key] = make()
            _UNCOUNTED[0] += _CACHE[key].take_load()
            while len(_CACHE) > MAX_MODELS:  # a daily job's retrained versions do not pile up in a worker
                _CACHE.pop(next(iter(_CACHE)))
        else:
            _CACHE[key] = _CACHE.pop(key)  # the newest use last
        return _CACHE[key]


def load(source: ModelSource, *, device: str | None = None, share=None) -> LoadedModel:
    """``cached`` for a ``ModelSource`` (``device``: the resolved device, when the engine chose it)."""
    device = device or resolve_device(source.device)
    return cached(source.key(device), lambda: source.load(device), share=share)


def local(artifact, device: str = "auto") -> LoadedModel:
    """An artifact already loaded in this process (the local loop's, by the launcher), in the
    cache under its hash, its load counted like any other."""
    device = resolve_device(device)
    key = (artifact.digest or f"unhashed-{id(artifact)}", device, _schema_digest(artifact.schema))
    return cached(key, lambda: Imputer(artifact, device=device))


def take_loads() -> int:
    """The loads this process made since the last call (the run's ``model_loads``)."""
    with _LOCK:
        n, _UNCOUNTED[0] = _UNCOUNTED[0], 0
        return n


def clear() -> None:
    """Forget every loaded model (a test's fresh worker)."""
    with _LOCK:
        _CACHE.clear()
        _UNCOUNTED[0] = 0
