"""The example line and scenario, shipped inside the package.

A command given no ``--config`` runs on :data:`EXAMPLE_CONFIG`. Both files are package data
(``[tool.setuptools.package-data]`` in pyproject.toml), so a wheel installed anywhere, or the
container, has them; ``deploy/`` in the checkout links to them.
"""

from __future__ import annotations

from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent / "examples"
EXAMPLE_CONFIG = EXAMPLES / "line.example.toml"
EXAMPLE_SCENARIO = EXAMPLES / "scenario.example.toml"
