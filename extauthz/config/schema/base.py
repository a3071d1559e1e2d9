"""What every part of the configuration schema shares: the strict base model, names, header
names, durations and the rules for where secrets come from.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
#: an environment variable name (``*_env`` keys)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class Model(BaseModel):
    """Base: unknown keys are errors, values are immutable after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def header_name(value: str) -> str:
    """``value`` lowercased; ValueError when it is not an HTTP header name."""
    lowered = value.lower()
    if not _HEADER_NAME.match(lowered):
        raise ValueError(f"not a valid HTTP header name: {value!r}")
    return lowered


HeaderName = Annotated[str, Field(min_length=1, max_length=128)]
Name = Annotated[str, Field(pattern=_NAME.pattern)]
PositiveSeconds = Annotated[float, Field(gt=0, le=86400 * 7)]


def refuse_inline_secret(data: Any, *names: str) -> None:
    """A secret written into the file itself is refused: secrets come from files or the
    environment (``<name>_file`` / ``<name>_env``)."""
    if isinstance(data, dict):
        for name in names:
            if name in data:
                raise ValueError(
                    f"{name}: inline secrets are refused; use {name}_file or {name}_env"
                )


def one_secret_source(file: str | None, env: str | None, prefix: str) -> None:
    """Exactly one of ``<prefix>_file`` and ``<prefix>_env``, each well formed."""
    if (file is None) == (env is None):
        raise ValueError(f"set exactly one of {prefix}_file, {prefix}_env")
    if env is not None and not ENV_NAME.match(env):
        raise ValueError(f"{prefix}_env: not an environment variable name: {env!r}")
    if file is not None and not file.strip():
        raise ValueError(f"{prefix}_file: must not be empty")
