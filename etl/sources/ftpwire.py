"""ftplib's data transfers with ``REST`` and ``RETR`` sent together: one round trip less.

A tick reads each file from an offset: ftplib sends ``PASV``, ``REST`` and ``RETR`` one
after the other, waiting for each reply. ``REST`` only sets where the next transfer
starts, and every server answers it at once, so :class:`PipelinedFTP` sends it with the
command that follows in one write and reads their replies in turn (RFC 959 has the
server read commands in order from the control connection). With hundreds of files a
tick that is a round trip and a system call less per file, and per file a quarter of
the waiting on a server across a network.

Pipelined replies must be read whatever they say, or the control connection falls out
of step: when ``REST`` is refused the server still runs the ``RETR``, from byte 0, and
its replies are read (and its transfer cut short) before the refusal is raised.
"""

from __future__ import annotations

import contextlib
import ftplib
import socket

__all__ = ["PipelinedFTP"]


class PipelinedFTP(ftplib.FTP):
    """``ftplib.FTP`` whose transfers from an offset send ``REST`` and the command together."""

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple:
        if rest is None or not self.passiveserver:
            return super().ntransfercmd(cmd, rest)
        host, port = self.makepasv()
        conn = self._data_connection(host, port)
        try:
            request = f"REST {rest}\r\n{cmd}\r\n"
            if "\n" in cmd or "\r" in cmd:  # as ftplib's putline refuses it
                raise ValueError("an illegal newline character should not be contained")
            self.sock.sendall(request.encode(self.encoding))
            try:
                self.getresp()  # 350
            except ftplib.Error:
                self._skip_transfer(conn)
                raise
            resp = self.getresp()
            if resp[0] == "2":
                resp = self.getresp()
            if resp[0] != "1":
                raise ftplib.error_reply(resp)
        except BaseException:
            conn.close()
            raise
        return conn, ftplib.parse150(resp) if resp[:3] == "150" else None

    def _data_connection(self, host: str, port: int) -> socket.socket:
        # PASV gives an address: connected to as it is, without create_connection's
        # name lookup (a tenth of a transfer's set-up).
        conn = socket.socket(self.af, socket.SOCK_STREAM)
        try:
            conn.settimeout(self.timeout)
            if self.source_address is not None:
                conn.bind(self.source_address)
            conn.connect((host, port))
        except BaseException:
            conn.close()
            raise
        return conn

    def _skip_transfer(self, conn: socket.socket) -> None:
        """Reads the replies of a command sent after a refused ``REST``; a transfer it
        started is cut short (the server answers 426, or 226 if it was done)."""
        with contextlib.suppress(ftplib.Error):
            if self.getresp()[0] == "1":
                conn.close()
                self.getresp()
