"""What every section of the line config is made of: strict, frozen models and shared types."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PositiveFloat = Annotated[float, Field(gt=0)]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")]


class Strict(BaseModel):
    """A config section: unknown fields refused, frozen, no NaN or infinity."""

    # allow_inf_nan: a NaN fails no bound (every comparison with it is false), then every
    # decision that uses it
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
