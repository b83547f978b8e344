"""``parcel-sorter check-config``: validate a line config and print its layout."""

from __future__ import annotations

import logging
from pathlib import Path

from controller.config import load_config
from controller.state_paths import Purpose, require_paths
from drivers.cameras import needs_latency
from drivers.decoders import make_line_decoders

log = logging.getLogger(__name__)


def check_config(path: Path, purpose: Purpose = "run") -> int:
    """Validate the line config at ``path`` for ``purpose``, print its layout, warn.

    For ``run`` (the unit's ExecStartPre=) it refuses all ``run`` refuses; ``sim`` passes a
    config of the emulated line (cameras ``source = "emulator"``, no ``[line_io]``).
    """
    config = load_config(path)
    require_paths(config, str(path), purpose)  # everything it would refuse, one line each
    make_line_decoders(config, str(path))  # the symbologies, and decoders that read them
    print(f"{path}: valid line {config.line.name!r} for {purpose}")
    print(f"  belt {config.belt.speed_mm_s:.0f} mm/s, {config.belt.encoder_counts_per_mm} "
          f"counts/mm, PE-IN at {config.induction.photo_eye_mm:.0f} mm")
    for cam in config.cameras:
        print(f"  camera {cam.id}: {cam.view_start_mm:.0f}-{cam.view_end_mm:.0f} mm, "
              f"{cam.resolution[0]}x{cam.resolution[1]} @ {cam.fps:g} fps, "
              f"{cam.mm_per_px:.3f} mm/px, decoder {cam.decoder}, source {cam.source}")
        if needs_latency(cam.source) and cam.latency_ms == 0:
            offset = config.belt.speed_mm_s * 0.016
            print(f"  WARNING camera {cam.id}: its frames carry no encoder count, and "
                  f"latency_ms is 0: measure its capture-to-arrival delay and set it (each "
                  f"16 ms uncorrected puts reads {offset:.0f} mm off at full belt speed, "
                  f"onto the neighbouring parcel when gaps are small)")
    for d in config.diverters:
        print(f"  diverter {d.id} at {d.position_mm:.0f} mm -> bin {d.bin} "
              f"(capacity {config.bin(d.bin).capacity})")
    print(f"  end of line ({config.end_of_line.role}) at {config.end_of_line.position_mm:.0f} mm")
    print(f"  sort plan: {len(config.sort_plan.rules)} rules, "
          f"overflow {config.sort_plan.overflow or 'none'}")
    line_io = config.line_io
    if line_io is None:
        print("  line I/O: none ([line_io] absent: `sim` only, `run` needs it)")
        return 0
    if line_io.serial is not None:
        print(f"  serial I/O board: {line_io.serial.port} at {line_io.serial.baudrate} baud")
    if line_io.mqtt is not None:
        print(f"  MQTT broker: {line_io.mqtt.host}:{line_io.mqtt.port}, topics under "
              f"{line_io.mqtt.topic_prefix}/{config.line.name}/io/, QoS {line_io.mqtt.qos}")
    print(f"  sensors on {line_io.sensors}; diverters on " + ", ".join(
        f"{d.id} {config.diverter_link(d)}" for d in config.diverters))
    return 0
