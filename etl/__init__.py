"""headrace etl, a library: tail logs, extract and transform on Dask every tick, publish frames.

:mod:`headrace.etl.contract` is the part readers use; the rest is the loop's: sources
(:mod:`~headrace.etl.sources`), parsers (:mod:`~headrace.etl.parse`), transforms, streams
and their config, the tick loop (:mod:`~headrace.etl.loop`) and what it keeps
(:mod:`~headrace.etl.store`). It starts no process and reads no command line:
:mod:`headrace.cluster` runs it. The names users need are in :mod:`headrace`.
"""

if __name__ != "headrace.etl":  # a checkout's root makes this folder importable as 'etl'
    raise ImportError(f"{__name__!r} is headrace's own folder: import headrace.etl")
