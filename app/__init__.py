"""headrace's Panel side: the live path, views of streams and the pages served."""

if __name__ != "headrace.app":  # a checkout's root makes this folder importable as 'app'
    raise ImportError(f"{__name__!r} is headrace's own folder: import headrace.app")
