"""FTP credentials from a netrc file, as ``ftp`` and ``curl`` read them."""

from __future__ import annotations

import netrc
from pathlib import Path

__all__ = ["netrc_lookup"]


def netrc_lookup(host: str, netrc_file: str | None, where: str) -> tuple[str, str] | None:
    """The login and password for ``host`` in ``netrc_file`` (or ~/.netrc), if any.

    ``where`` (the source, for messages) names what a bad file breaks.
    """
    if netrc_file is None and not (Path.home() / ".netrc").exists():
        return None
    try:
        entry = netrc.netrc(netrc_file).authenticators(host)
    except FileNotFoundError as e:
        raise ValueError(f"{where}: netrc file {netrc_file} not found") from e
    except netrc.NetrcParseError as e:
        # The parser's message may quote a token from the file: a password, maybe.
        problem = f"bad syntax or permissions too open (line {e.lineno})"
        raise ValueError(f"{where}: cannot use netrc file {e.filename}: {problem}") from None
    if entry is None:
        return None
    login, _account, password = entry
    return login or "", password or ""
