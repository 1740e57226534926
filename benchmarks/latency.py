"""A TCP proxy that delays every byte by a fixed time each way: a server across a network.

The benchmarks run their FTP server on this machine, a fraction of a millisecond from
the workers; the field's log server is across the site's network. Put in front of the
server's control port, :class:`Delay` makes each command's round trip take ``rtt`` more
(data connections go straight to the server), so a worker spends most of a read waiting,
as on site, and adding workers adds capacity while the machine's cores stay free.
"""

from __future__ import annotations

import asyncio
import threading
import time

CHUNK = 65536


class Delay:
    """Listen on ``port``; pass each connection on to ``upstream``, ``rtt / 2`` each way."""

    def __init__(self, port: int, upstream: tuple[str, int], rtt: float, host: str = "127.0.0.1"):
        self.port, self.upstream, self.half, self.host = port, upstream, rtt / 2, host
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)

    def start(self) -> Delay:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"the delaying proxy did not listen on {self.host}:{self.port}")
        return self

    def stop(self) -> None:
        """Close the listener and every connection, and end the proxy's thread."""
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._serve, self.host, self.port)
        self._ready.set()
        await self._stopping.wait()
        server.close()
        connections = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Bytes from ``reader`` to ``writer``, each chunk ``half`` seconds after it came,
        in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(data)
                await writer.drain()
            writer.close()

        delivering = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(CHUNK)
                await queue.put((time.monotonic() + self.half, data))
                if not data:
                    break
        finally:
            await queue.put((0.0, b""))
            await delivering
