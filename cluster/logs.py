"""How every headrace process logs: one line per event, ``time LEVEL logger: message``."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr at ``level``; distributed, Bokeh, Tornado and pyftpdlib at WARNING."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    # distributed logs every worker and client event at INFO; keep ours readable
    for noisy in ("distributed", "bokeh", "tornado", "pyftpdlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
