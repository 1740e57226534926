"""Sessions prepared ahead: a page opens at the cost of renaming a session built earlier.

Building a session (the page's code, Panel's models, Bokeh's document) is most of what
opening a page costs a Panel process. So each process keeps a few sessions of each page
that was opened recently, built ahead in the quiet between fan-out flushes
(:class:`~headrace.app.live.admission.Admission`, after any open that waits, and only
once opens paused for :data:`QUIET`: during a crowd, builds are for its viewers), and an
open takes one: Bokeh's session is renamed to the id the browser asked for and given
its request (:func:`~headrace.app.live.internals.adopt_session`). Everything else is
the usual path: the browser pulls the document, reports it ready, and the fan-out sends
the rows since the session was built. A prepared session is a real one, built by the
page's own code, so widgets, zoom, history windows and themes work as in any other.

A prepared session is only ever given to an open of the same page, query arguments
(the theme among them) and logged-in user, since a page's code may read them while it
builds. Sessions nobody took within :data:`MAX_AGE` are let go (Bokeh destroys them as
usual) and built again while the page is still wanted (opened within :data:`WANTED`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from headrace.app.live.admission import Admission
from headrace.app.live.internals import (
    adopt_session,
    prepare_session,
    release_session,
    session_key,
)

log = logging.getLogger(__name__)

KEYS = 4  # pages kept ready per process, the most recently opened
# Seconds a prepared session waits before it is let go and built again: its sources are
# as old, and the fan-out sends it the rows since (well inside a stream's window).
MAX_AGE = 300.0
WANTED = 600.0  # seconds after its last open that a page is still kept ready
CHECK = 0.5  # seconds between looks at what needs building
QUIET = 0.5  # seconds without opens before building ahead: a crowd's opens come first
# A build ahead rests four times as long as it took before the next build: refilling
# after a crowd takes a fifth of the process's time, so watchers' flushes are seldom late.
REST = 4.0


@dataclass
class Page:
    """Sessions ready for one key, and the last open's handler and token to build more."""

    handler: Any
    token: str
    opened: float
    ready: deque[tuple[float, Any]] = field(default_factory=deque)  # (built, session)
    building: asyncio.Future[None] | None = None  # a session of this page being built now


class Prepared:
    """One process's prepared sessions; :meth:`open` is the server's way to open any."""

    def __init__(self, admission: Admission, size: int, max_age: float = MAX_AGE) -> None:
        self.admission = admission
        self.size, self.max_age = size, max_age
        self.pages: OrderedDict[tuple, Page] = OrderedDict()
        self.adopted = self.built = self.expired = 0
        self.last_open = float("-inf")  # time.monotonic() of the last open
        self._building = False
        self._timer: asyncio.TimerHandle | None = None
        self.stopped = False

    async def open(self, handler: Any, token: str, open_: Callable[[], Awaitable[None]]) -> None:
        """Open the websocket session ``token`` names: a prepared one if there is one."""
        self.last_open = time.monotonic()
        key = session_key(handler, token) if self.size else None
        page = self.pages.get(key) if key is not None else None
        session = self._take(page) if page is not None else None
        if session is None and page is not None and page.building is not None:
            # One is being built ahead right now: take it rather than build another.
            await asyncio.shield(page.building)
            session = self._take(page)
        if key is not None:
            self._want(key, handler, token)
        if session is not None:
            adopt_session(handler, session, token)
            self.adopted += 1
            await open_()  # Bokeh finds the session by its new id: nothing to build
            return
        await self.admission.admit(open_)

    def _take(self, page: Page) -> Any:
        self._expire(page)
        return page.ready.popleft()[1] if page.ready else None

    def _want(self, key: tuple, handler: Any, token: str) -> None:
        page = self.pages.get(key)
        if page is None:
            page = self.pages[key] = Page(handler, token, time.monotonic())
            while len(self.pages) > KEYS:
                _, gone = self.pages.popitem(last=False)
                self._let_go(gone)
        else:
            page.handler, page.token, page.opened = handler, token, time.monotonic()
            self.pages.move_to_end(key)
        self._soon(QUIET)

    def _soon(self, delay: float) -> None:
        if self._timer is None and not self.stopped:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # the server's loop is closing: nothing more to build
                return
            self._timer = loop.call_later(delay, lambda: asyncio.ensure_future(self._fill()))

    def stop(self) -> None:
        """Build no more (the server stops, or this process's parts were replaced)."""
        self.stopped = True

    async def _fill(self) -> None:
        """Build one missing session (in the admission's turn), then look again later."""
        self._timer = None
        if self._building or self.stopped:
            return
        now = time.monotonic()
        for key, page in list(self.pages.items()):
            if now - page.opened > WANTED:
                del self.pages[key]
                self._let_go(page)
            else:
                self._expire(page)
        page = next((p for p in self.pages.values() if len(p.ready) < self.size), None)
        quiet = time.monotonic() - self.last_open >= QUIET
        if page is None or not quiet:
            if self.pages:
                self._soon(CHECK)
            return
        self._building = True
        try:
            if self.admission.waiting == 0:  # opens waiting come first
                await self.admission.admit(lambda: self._build(page), rest=REST)
        except Exception as exc:  # a page that fails to build fails its viewers' opens too
            log.warning("prepared sessions: building %s failed: %s", page.handler.request.path, exc)
        finally:
            self._building = False
            self._soon(0.0 if self.admission.waiting == 0 else CHECK)

    async def _build(self, page: Page) -> None:
        if self.admission.waiting:  # an open arrived while this waited: it goes first
            return
        page.building = building = asyncio.get_running_loop().create_future()
        try:
            session = await prepare_session(page.handler, page.token)
            page.ready.append((time.monotonic(), session))
            self.built += 1
        finally:
            page.building = None
            building.set_result(None)

    def _expire(self, page: Page) -> None:
        now = time.monotonic()
        while page.ready and now - page.ready[0][0] > self.max_age:
            release_session(page.ready.popleft()[1])
            self.expired += 1

    def _let_go(self, page: Page) -> None:
        while page.ready:
            release_session(page.ready.popleft()[1])
            self.expired += 1

    def info(self) -> dict[str, int]:
        """Counts for metrics and tests."""
        return {
            "prepared": sum(len(p.ready) for p in self.pages.values()),
            "adopted": self.adopted,
            "prepared_built": self.built,
        }
