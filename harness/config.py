"""Run configuration: one validated, plain-data description of a training run.

The defaults are the seed's settings (snnTorch tutorial 5). Every problem with a config is a
`ConfigError` whose message names the key and what is allowed, so the CLI can print one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SURROGATE_DEFAULT_SLOPE = {"atan": 2.0, "fast_sigmoid": 25.0}


class ConfigError(ValueError):
    """An invalid config, study file or command-line setting (one line, names the key)."""


class RunConfig(BaseModel):
    """Everything that decides what one training run computes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    beta: float = Field(0.95, gt=0.0, le=1.0, description="membrane decay per step, in (0, 1]")
    num_steps: int = Field(25, ge=1, le=10_000, description="time steps per sample")
    hidden: int = Field(1000, ge=1, description="hidden LIF neurons")
    threshold: float = Field(1.0, gt=0.0, description="firing threshold")
    surrogate: Literal["atan", "fast_sigmoid"] = "atan"
    slope: float | None = Field(
        None, gt=0.0, description="surrogate sharpness: atan's alpha or fast_sigmoid's slope"
    )
    decoding: Literal["rate", "latency"] = "rate"
    lr: float = Field(5e-4, gt=0.0, le=10.0)
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(1, ge=1)
    seed: int = Field(0, ge=0)
    device: str = "auto"
    backend: Literal["fused", "reference"] = "fused"
    eval_every: int = Field(25, ge=1, description="iterations between test-batch losses")
    train_subset: int | None = Field(None, ge=1, description="train on this many images")
    test_subset: int | None = Field(None, ge=1, description="test on this many images")
    subset_sampling: Literal["first", "stratified"] = "first"

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        base, _, index = value.partition(":")
        if base not in {"auto", "cpu", "cuda", "mps"} or (index and not index.isdigit()):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return value

    @property
    def surrogate_slope(self) -> float:
        """The slope in force: the configured one, else the surrogate's own default."""
        return self.slope if self.slope is not None else SURROGATE_DEFAULT_SLOPE[self.surrogate]


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(RunConfig.model_fields)
        return f"{source}: unknown key '{key}' (allowed: {allowed})"
    message = first["msg"].removeprefix("Value error, ")
    return f"{source}: invalid value for '{key}': {message} (got {first.get('input')!r})"


def make_run_config(values: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a mapping of run settings; raise ConfigError naming the offending key."""
    try:
        return RunConfig.model_validate(values)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn `key=value` strings into a mapping; values are parsed as YAML scalars."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set: expected key=value, got {pair!r}")
        try:
            values[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(
                f"--set: cannot parse the value of '{key.strip()}': {raw!r}"
            ) from None
    return values


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping from a file, with one-line errors."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def load_run_config(path: Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Build a run config from a YAML file's run settings plus `key=value` overrides.

    A study file keeps its run settings under `base`; a plain run file holds them at the top.
    """
    values: dict[str, Any] = {}
    source = "config"
    if path is not None:
        data = read_yaml(path)
        values = dict(data.get("base") or {}) if "base" in data else data
        source = str(path)
    set_values = parse_overrides(overrides or [])
    values.update(set_values)
    return make_run_config(values, source if not set_values else f"{source} with --set")
