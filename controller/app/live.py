"""The technicians' live view of a running line: diagnostics and commands over MQTT.

:func:`diagnostics` puts the parts of docs/diagnostics-protocol.md together for ``run`` and
``sim``: the broker connection (:class:`~drivers.diagnostics_mqtt.MqttDiagnostics`), what it
publishes (:class:`~controller.diagnostics.Diagnostics`) and who carries out the commands
(:class:`~controller.commands.CommandDesk`). The line's config says whether there is any.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from controller import __version__
from controller.clock import Clock
from controller.commands import CommandDesk
from controller.config import LineConfig
from controller.diagnostics import Diagnostics, RollingTelemetry
from controller.sorter import Sorter

__all__ = ["diagnostics"]


@asynccontextmanager
async def diagnostics(config: LineConfig, sorter: Sorter, clock: Clock, *,
                      config_path: Path | None, telemetry: RollingTelemetry,
                      link_states: Callable[[], Mapping[str, object]] | None = None,
                      device_states: Callable[[], Mapping[str, str]] | None = None,
                      store_state: Callable[[], str] | None = None,
                      ) -> AsyncIterator[Diagnostics | None]:
    """The line's diagnostics while the block runs; None if its config has none.

    ``telemetry`` is the one the Sorter was built with (beside Prometheus', through a
    :class:`~controller.diagnostics.TelemetryFanout`). ``store_state`` says ``up`` or
    ``down`` of the order store; by default ``down`` while the line still waits for it.
    """
    from drivers.diagnostics_mqtt import MqttDiagnostics
    from drivers.lineio.tasks import cancel_and_wait

    settings = config.diagnostics
    if settings is None:
        yield None
        return
    line = config.line.name

    # the connection is made at ``async with sink``, when both of these are there
    async def on_command(verb: str, payload: bytes) -> Mapping[str, Any]:
        return await desk.handle(verb, payload)

    def on_connect() -> None:
        watch.rebirth()

    def store_waited_for() -> str:
        return "down" if "order store" in sorter.waiting_for() else "up"

    sink = MqttDiagnostics(settings, line=line, on_command=on_command, on_connect=on_connect,
                           version=__version__)
    watch = Diagnostics(sorter, clock, sink, line=line, version=__version__,
                        every_s=settings.metrics_every_s, telemetry=telemetry,
                        window_s=telemetry.window_s, link_states=link_states,
                        device_states=device_states,
                        store_state=store_state or store_waited_for)
    desk = CommandDesk(sorter, config_path=config_path, clock=clock, rebirth=watch.rebirth)
    async with sink:
        publishing = asyncio.create_task(watch.run(), name="diagnostics")
        try:
            yield watch
        finally:
            await cancel_and_wait([publishing])
            watch.close()
