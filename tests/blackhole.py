"""A TCP proxy in front of an FTP server that can stop answering, for the hung-server faults.

Its control port forwards to the server's; the passive replies it forwards (``227`` and
``229``) name a data port of its own, so data connections pass through it too. Either
kind of connection can be made to hang: bytes are accepted and held, never answered,
as a server does whose disk or network stalls.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading

PASV = re.compile(rb"^227 .*\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)")
EPSV = re.compile(rb"^229 .*\(\|\|\|(\d+)\|\)")


class Blackhole:
    """``hang("control")``: the control connections (new and open) get no more bytes
    either way, a server that accepts and then never answers; ``hang("data")``: commands
    are answered but no data connection carries a byte; ``heal()``: traffic flows again.
    """

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.flowing = {"control": threading.Event(), "data": threading.Event()}
        self.heal()
        self._closed = False
        self._sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def url(self, server, name: str) -> str:
        return server.url(name).replace(f":{server.port}/", f":{self.port}/")

    def hang(self, what: str = "control") -> None:
        self.flowing[what].clear()

    def heal(self) -> None:
        for event in self.flowing.values():
            event.set()

    def close(self) -> None:
        self._closed = True
        self.heal()
        for s in self._sockets:
            s.close()

    def _accept(self, listener: socket.socket, target: int | None = None, once=False) -> None:
        while not self._closed:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            kind = "control" if target is None else "data"
            upstream = socket.create_connection(("127.0.0.1", target or self.target))
            self._sockets += [client, upstream]
            replies = self._passive if kind == "control" else None
            threading.Thread(target=self._pipe, args=(client, upstream, kind), daemon=True).start()
            threading.Thread(
                target=self._pipe, args=(upstream, client, kind, replies), daemon=True
            ).start()
            if once:
                listener.close()
                return

    def _passive(self, line: bytes) -> bytes:
        """The server's passive reply, naming a port of ours that forwards to its port."""
        if m := PASV.match(line):
            port = int(m[5]) * 256 + int(m[6])
        elif m := EPSV.match(line):
            port = int(m[1])
        else:
            return line
        data = socket.create_server(("127.0.0.1", 0))
        self._sockets.append(data)
        threading.Thread(target=self._accept, args=(data, port, True), daemon=True).start()
        ours = data.getsockname()[1]
        if line.startswith(b"227"):
            return b"227 Entering Passive Mode (127,0,0,1,%d,%d).\r\n" % divmod(ours, 256)
        return b"229 Entering Extended Passive Mode (|||%d|)\r\n" % ours

    def _pipe(self, src: socket.socket, dst: socket.socket, kind: str, replies=None) -> None:
        pending = b""
        try:
            while data := src.recv(65536):
                self.flowing[kind].wait()  # a hung server: bytes are held, never answered
                if replies is not None:  # rewritten a whole reply line at a time
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    data = b"".join(replies(line + b"\n") for line in lines)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                # Shut down first: a close alone leaves the socket open while the other
                # direction's thread is blocked reading it, and the peer never sees EOF.
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
