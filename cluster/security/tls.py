"""Dask's TLS for every headrace process, configured the Dask way.

A TLS setting is Dask configuration (``distributed.comm.tls.*`` and
``distributed.comm.require-encryption``), so a ``distributed.Client`` made without an
explicit ``security=`` (the loop's, each Panel process's subscriber, ``headrace
status``) uses it; set it in a Dask config file, as ``DASK_DISTRIBUTED__COMM__TLS__...``
environment variables, or with the commands' ``--tls-ca-file/--tls-cert/--tls-key``,
which :func:`configure` turns into that configuration and :func:`environ` passes on to
the Panel processes. ``dask scheduler`` and ``dask worker`` take the same three
options.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dask
from distributed.security import Security


@dataclass(frozen=True)
class TLSFiles:
    ca: str  # the CA certificate every party trusts
    cert: str  # this party's certificate
    key: str  # its private key

    @classmethod
    def given(cls, ca: str | None, cert: str | None, key: str | None) -> TLSFiles | None:
        """From the three options: all or none (a ValueError names what is missing)."""
        values = {"--tls-ca-file": ca, "--tls-cert": cert, "--tls-key": key}
        if not any(values.values()):
            return None
        missing = [name for name, v in values.items() if not v]
        if missing:
            raise ValueError(
                f"TLS needs all of --tls-ca-file, --tls-cert, --tls-key: {missing} missing"
            )
        for name, v in values.items():
            if not Path(v).is_file():
                raise ValueError(f"{name} {v}: no such file")
        return cls(str(ca), str(cert), str(key))

    def config(self) -> dict[str, object]:
        """The Dask configuration: this party as client, scheduler and worker, TLS only."""
        return {
            "distributed.comm.require-encryption": True,
            "distributed.comm.tls.ca-file": self.ca,
            "distributed.comm.tls.client.cert": self.cert,
            "distributed.comm.tls.client.key": self.key,
            "distributed.comm.tls.scheduler.cert": self.cert,
            "distributed.comm.tls.scheduler.key": self.key,
            "distributed.comm.tls.worker.cert": self.cert,
            "distributed.comm.tls.worker.key": self.key,
        }

    def security(self) -> Security:
        """For a LocalCluster started here (the embedded cluster, the demo)."""
        return Security(
            tls_ca_file=self.ca,
            tls_client_cert=self.cert,
            tls_client_key=self.key,
            tls_scheduler_cert=self.cert,
            tls_scheduler_key=self.key,
            tls_worker_cert=self.cert,
            tls_worker_key=self.key,
            require_encryption=True,
        )


def configure(files: TLSFiles | None) -> None:
    """Make ``files`` this process's Dask TLS configuration (None: leave it as it is)."""
    if files is not None:
        dask.config.set(files.config())


def environ(files: TLSFiles | None) -> dict[str, str]:
    """The same as environment variables, for child processes (Panel's)."""
    if files is None:
        return {}
    out = {}
    for key, value in files.config().items():
        name = "DASK_" + key.upper().replace(".", "__").replace("-", "_")
        out[name] = str(value)
    return out


def encrypted() -> bool:
    """Whether this process's Dask configuration requires TLS."""
    return bool(dask.config.get("distributed.comm.require-encryption", False))
