"""``panel serve --setup <this file>``: start this process's subscriber at process start.

With ``--num-procs`` Panel runs setup scripts in every child after the fork, on its
event loop, which is where the subscriber's Dask client must be created.
"""

from __future__ import annotations

from headrace.app import registry
from headrace.app.settings import configure_logging

configure_logging()
registry.get()
