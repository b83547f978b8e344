"""The line config's cross-field checks: what no single section can check by itself.

Ids unique and known to the plan, the geometry in order (PE-IN, cameras, diverters, the end
of the line), the links named, and a loop's geometry and exception bin
(:mod:`controller.config_line_end`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.config import LineConfig


def line_problems(config: LineConfig) -> list[str]:
    """Every inconsistency between the sections of a line config, one sentence each."""
    problems: list[str] = []
    for kind, items in (("cameras", config.cameras), ("diverters", config.diverters),
                        ("bins", config.bins)):
        ids = [item.id for item in items]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            problems.append(f"{kind}: duplicate id {', '.join(dupes)}")
    bin_ids = {b.id for b in config.bins}
    served = [d.bin for d in config.diverters]
    problems += [f"diverters: {d.id} serves unknown bin {d.bin!r}"
                 for d in config.diverters if d.bin not in bin_ids]
    problems += [f"bins: {b} is served by more than one diverter"
                 for b in sorted({b for b in served if served.count(b) > 1})]
    problems += _plan_problems(config, served)
    problems += _geometry_problems(config)
    problems += config.end_of_line.problems(config.induction.photo_eye_mm, served)
    if config.line_io is not None:
        problems += [f"diverters: {d.id} is on link {d.link!r} but there is no "
                     f"[line_io.{d.link}] section"
                     for d in config.diverters
                     if d.link is not None and getattr(config.line_io, d.link) is None]
    return problems


def _plan_problems(config: LineConfig, served: list[str]) -> list[str]:
    plan = config.sort_plan
    problems: list[str] = []
    for rule in plan.rules:
        problems += [f"sort_plan.rules: rule {rule.name!r} names unknown bin {b!r}"
                     for b in rule.bins or () if b not in served]
    for name, destination in plan.destinations.items():
        problems += [f"sort_plan.destinations.{name}: unknown bin {b!r}"
                     for b in destination.bins + destination.alternates if b not in served]
    if plan.overflow is not None and plan.overflow not in served:
        problems.append(f"sort_plan.overflow: unknown bin {plan.overflow!r}")
    return problems


def _geometry_problems(config: LineConfig) -> list[str]:
    pe = config.induction.photo_eye_mm
    last_view = max(c.view_end_mm for c in config.cameras)
    problems = [f"induction.{name}: {value:g} mm is longer than the belt from PE-IN to "
                f"the read zone's end ({last_view - pe:g} mm): a parcel would be decided "
                f"before the gap behind it is measured"
                for name, value in (("min_gap_mm", config.induction.min_gap_mm),
                                    ("min_pitch_mm", config.induction.min_pitch_mm))
                if value > last_view - pe]
    problems += [f"cameras: {c.id} sees belt upstream of the induction photo-eye"
                 for c in config.cameras if c.view_start_mm < pe]
    problems += [f"diverters: {d.id} at {d.position_mm} mm is not downstream of the cameras"
                 f" (read zone ends at {last_view} mm)"
                 for d in config.diverters if d.position_mm <= last_view]
    problems += [f"end_of_line: position must be downstream of diverter {d.id}"
                 for d in config.diverters if d.position_mm >= config.end_of_line.position_mm]
    return problems
