"""``skiff soak``: a load and soak tester of any Docker-API engine (a client tool, not a service).

It speaks to the engine over the Docker Engine API only (asyncio over aiohttp's UNIX connector),
launches containers that print a numbered sequence and exit with a code it chose, injects faults
into a Skiff engine it started itself (signals by pid), and keeps an account of what was lost,
wrong or leaked. ``cli.py`` composes: ``client`` (timed API calls), ``workloads``, ``faults`` with
``engine`` (the private engine), ``probes`` (leaks and service samples), ``account``, ``histogram``,
``progress`` and ``plot``.
"""
