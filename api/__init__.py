"""The Starlette application, its HTTP routes and middleware, and the CLI."""

import sys

# Every Depot process imports this first: the ``depot`` command and the processes of
# ``depot serve --workers``. Libraries Depot uses pick these packages up when they are
# installed (structlog: rich for its tracebacks; Mako, through Alembic: Pygments;
# Dramatiq: gevent; OpenTelemetry's SDK, through redis: psutil), and Depot needs none of
# them: the image does not install them, the development tools do (pip-audit, pytest,
# Locust). Importing them cost each process 168 of its 1,272 modules, about 0.25 s of
# CPU at every start, and the tests start hundreds of processes; without them a process
# behaves as the image's does. ``None`` in sys.modules makes an import of one raise
# ImportError (the import system's documented "not importable"; typeshed allows modules).
for _name in ("rich", "pygments", "gevent", "psutil"):
    sys.modules.setdefault(_name, None)  # type: ignore[arg-type]
