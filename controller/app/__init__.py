"""The face of the controller: the CLI, and the wiring of real drivers and of the emulator.

The only package under ``controller`` that names the driver and emulator packages; the rest
of ``controller`` knows them only through the Protocols it owns.
"""
