"""The end of the line: a reject (parcels not diverted leave there) or a loop's return.

``role = "reject"``: every parcel not diverted leaves the line at ``position_mm``.

``role = "recirculate"``: the line is a loop (a cross-belt or tilt-tray sorter, or a pusher
belt whose end feeds back to the induction). A parcel not diverted passes the end-of-line
photo-eye at ``position_mm`` and comes back around to PE-IN: the whole loop is
``loop_length_mm`` of belt travel, so the return from the end-of-line photo-eye to PE-IN is
``loop_length_mm - (position_mm - induction.photo_eye_mm)``. A parcel gets ``max_laps``
passes (the first pass is lap 1); one that is not diverted by then goes to
``exception_bin`` (a bin of the line, with disposition RECIRC_LIMIT), or, without one,
leaves the loop at the end of line through its exit gate.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from controller.config_base import Identifier, PositiveFloat, Strict

MIN_RETURN_MM = 500.0  # a loop's return shorter than this leaves no room for a merge


class EndOfLineConfig(Strict):
    position_mm: float
    role: Literal["reject", "recirculate"] = "reject"
    loop_length_mm: PositiveFloat | None = Field(default=None, description=(
        "recirculate: belt travel for a point of the loop to come round to the same place"))
    max_laps: Annotated[int, Field(ge=1, le=100)] = 3
    exception_bin: Identifier | None = Field(default=None, description=(
        "recirculate: the bin a parcel that reaches max_laps goes to (RECIRC_LIMIT); "
        "none: it leaves the loop at the end of line"))

    @model_validator(mode="after")
    def _loop_has_a_length(self) -> EndOfLineConfig:
        if self.role == "recirculate" and self.loop_length_mm is None:
            raise ValueError("role = 'recirculate' needs loop_length_mm")
        if self.role == "reject" and (self.loop_length_mm is not None
                                      or self.exception_bin is not None):
            raise ValueError("loop_length_mm and exception_bin are for role = 'recirculate'")
        return self

    @property
    def recirculates(self) -> bool:
        return self.role == "recirculate"

    def return_mm(self, photo_eye_mm: float) -> float:
        """Belt travel from the end-of-line photo-eye back round to PE-IN."""
        assert self.loop_length_mm is not None
        return self.loop_length_mm - (self.position_mm - photo_eye_mm)

    def problems(self, photo_eye_mm: float, served_bins: list[str]) -> list[str]:
        """What is wrong with the loop given the rest of the line (nothing for a reject)."""
        if not self.recirculates:
            return []
        found: list[str] = []
        if self.return_mm(photo_eye_mm) < MIN_RETURN_MM:
            found.append(f"end_of_line.loop_length_mm: {self.loop_length_mm:g} mm leaves "
                         f"{self.return_mm(photo_eye_mm):g} mm from the end of line back to "
                         f"PE-IN, less than {MIN_RETURN_MM:g} mm")
        if self.exception_bin is not None and self.exception_bin not in served_bins:
            found.append(f"end_of_line.exception_bin: {self.exception_bin!r} is not a bin a "
                         "diverter serves")
        return found
