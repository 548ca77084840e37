"""The job configuration (YAML), validated on load, before any work starts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lakefill.errors import ConfigError
from lakefill.schema import read_yaml_mapping

__all__ = ["JobConfig", "CsvConfig", "load_config", "DEFAULT_CONFIG"]

EXAMPLES = Path(__file__).resolve().parent / "examples"


class CsvConfig(BaseModel):
    """How the input is read when it is a delimited text file (``lakefill.transforms.io.CsvOptions``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delimiter: str | None = Field(default=None, description="one character; sniffed from the file when absent")
    quotechar: str = '"'
    encoding: str = "utf-8-sig"

    @model_validator(mode="after")
    def _valid(self) -> "CsvConfig":
        self.options()  # CsvOptions checks the characters and the encoding
        return self

    def options(self):
        from lakefill.transforms.io import CsvOptions

        return CsvOptions(delimiter=self.delimiter, quotechar=self.quotechar, encoding=self.encoding)


class JobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str
    schema_path: str | None = Field(default=None, alias="schema")
    model: str
    output: str = Field(description="folder of the run: lake table, quarantine table, report")
    run_id: str | None = None
    confidence_threshold: float = Field(default=0.15, ge=0.0, le=1.0,
                                        description="rows under it are refined by reverse training")
    refine: bool = True
    adapt: bool = Field(default=False, description="fine-tune a copy of the model's networks on the run's first "
                        "sample_rows records before the run; if that predicts better on rows kept aside, write it as a "
                        "new model version <model>.adapted-<run_id> and refine the low-confidence rows through it")
    adapt_rows: Literal["low_confidence", "all"] = Field(
        default="low_confidence", description="the rows a model's adapted networks fill (adapt, or a model version "
        "written by it): the low-confidence rows (the side stage; every other row keeps the trained model's fill) or all")
    max_quarantine_share: float = Field(default=0.1, ge=0.0, le=1.0)
    mode: Literal["error", "append", "overwrite", "overwrite_partitions"] = "error"
    partition_by: list[str] = Field(default_factory=list)
    sample_rows: int = Field(default=200_000, ge=1, description="rows the null policy is fitted on")
    batch_size: int = Field(default=200_000, ge=1, description="rows per Arrow batch through the stage")
    inference_batches: int = Field(default=2, ge=1, description="batches RunInference groups into one model call (Beam)")
    share_model: bool = Field(default=False, description="Beam: one model per machine, served to every SDK process "
                              "(MultiProcessShared); each batch then crosses a process boundary. Off: one per process")
    train_if_missing: bool = False
    train_time_budget: float = Field(default=0.0, ge=0.0, allow_inf_nan=False,
                                     description="seconds a model trained for this job may take (0: no limit)")
    device: Literal["auto", "cpu", "gpu"] = Field(default="auto", description="where the model runs: the GPU when torch sees one (auto)")
    csv: CsvConfig = Field(default_factory=CsvConfig, description="delimiter, quotechar, encoding of a CSV input")
    storage_options: dict[str, str] = Field(
        default_factory=dict, description="object-store endpoints, regions and flags in deltalake's key names "
        "(AWS_ENDPOINT_URL, AWS_REGION, AWS_ALLOW_HTTP, ...); credentials are best left to the environment")

    def location(self, where: str):
        """A path of the job (input, schema, model, output) as a storage ``Location``."""
        from lakefill.transforms.storage import Location

        return Location(where, self.storage_options)

    @property
    def out(self):
        """The run's output folder: table/, quarantine/, reports/RUN_ID/."""
        return self.location(self.output)

    @field_validator("storage_options", mode="before")
    @classmethod
    def _storage_options(cls, v):
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError("storage_options must be a mapping of option name to value")
        return {str(k): ("true" if x is True else "false" if x is False else str(x)) for k, x in v.items()}

    @property
    def csv_options(self):
        return self.csv.options()

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}", v):
            raise ValueError("run_id must be 1-128 characters of letters, digits and _ . : + -, starting with a letter or digit")
        return v

    def resolve(self, base: Path) -> "JobConfig":
        """Relative paths are relative to the config file's folder."""
        def r(p: str | None) -> str | None:
            if p is None or "://" in p or Path(p).is_absolute():
                return p
            return str((base / p).resolve())
        return self.model_copy(update={"input": r(self.input), "schema_path": r(self.schema_path),
                                       "model": r(self.model), "output": r(self.output)})


def load_config(path: str | Path) -> JobConfig:
    path = Path(path)
    raw = read_yaml_mapping(path, error=ConfigError, what="job config")
    try:
        cfg = JobConfig.model_validate(raw)
    except ValidationError as err:
        lines = [f"  - {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        raise ConfigError(f"{path}: invalid job config:\n" + "\n".join(lines)) from err
    return cfg.resolve(path.resolve().parent)


DEFAULT_CONFIG = EXAMPLES / "demo.yaml"
