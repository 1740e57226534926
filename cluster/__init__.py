"""headrace's processes and how they find each other.

The ``headrace`` command (:mod:`cluster.cli`), finding or starting the Dask cluster
(:mod:`cluster.connection`), the tick loop as a long-running service
(:mod:`cluster.service`: ``run``, ``serve``), the dashboard's Panel processes
(:mod:`cluster.panel`), child processes as a whole (:mod:`cluster.processes`) and the
demo (:mod:`cluster.demo`, with :mod:`cluster.ftpserver` and :mod:`cluster.logwriter`).
Nothing is imported here, so that starting a small part does not load Dask.
"""
