"""headrace's processes and how they find each other.

The ``headrace`` command (:mod:`headrace.cluster.cli`), finding or starting the Dask cluster
(:mod:`headrace.cluster.connection`), the tick loop as a long-running service
(:mod:`headrace.cluster.service`: ``run``, ``serve``), the dashboard's Panel processes
(:mod:`headrace.cluster.panel`), child processes as a whole
(:mod:`headrace.cluster.processes`), who may reach what (:mod:`headrace.cluster.security`)
and the demo (:mod:`headrace.cluster.demo`).
Nothing is imported here, so that starting a small part does not load Dask.
"""

if __name__ != "headrace.cluster":  # a checkout's root makes this folder importable as 'cluster'
    raise ImportError(f"{__name__!r} is headrace's own folder: import headrace.cluster")
