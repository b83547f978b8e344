"""The example line a command runs on when it is given no ``--config``."""

from __future__ import annotations

from pathlib import Path

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "line.example.toml"
