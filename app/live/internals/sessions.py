"""Bokeh server sessions opened in turn, or prepared ahead and adopted (see the package)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from headrace.app.live.internals.models import serialise_ahead

Opener = Callable[[Any, str, Callable[[], Awaitable[None]]], Awaitable[None]]


def gate_sessions(opener: Opener) -> None:
    """Open every websocket session of this process's Bokeh server through ``opener``.

    ``opener(handler, token, open)`` runs ``open()`` (Bokeh's own ``WSHandler._async_open``:
    find or make the session, send the ACK) when it decides, after perhaps
    :func:`adopt_session` of a prepared one under the token's id.
    :class:`~headrace.app.live.admission.Refused` closes the websocket with code 1013 and
    its message. Installed once per process; later calls do nothing.
    """
    from bokeh.server.views.ws import WSHandler

    from headrace.app.live.admission import Refused

    if getattr(WSHandler._async_open, "headrace", False):
        return
    original = WSHandler._async_open

    async def _async_open(self: WSHandler, token: str) -> None:
        try:
            await opener(self, token, lambda: original(self, token))
        except Refused as refused:
            self.close(1013, str(refused))

    _async_open.headrace = True  # type: ignore[attr-defined]
    WSHandler._async_open = _async_open  # type: ignore[method-assign]


def session_key(handler: Any, token: str) -> tuple[str, tuple, str | None]:
    """What a page's build may depend on: its app, its query arguments and its user."""
    from bokeh.util.token import get_token_payload

    user = handler.current_user
    return (
        handler.application_context.url,
        arguments_key(get_token_payload(token).get("arguments")),
        user.decode() if isinstance(user, bytes) else user,
    )


def arguments_key(arguments: dict[str, list[bytes]] | None) -> tuple:
    """A request's query arguments as a key, the session's id among them left out."""
    items = (arguments or {}).items()
    return tuple(sorted((k, tuple(v)) for k, v in items if k != "bokeh-session-id"))


async def prepare_session(handler: Any, token: str) -> Any:
    """A session built now, as ``handler``'s own would be, kept until adopted, its
    document serialised ahead.

    Bokeh's own ``create_session_if_needed`` under a new id, with the request and token of
    ``handler`` (an open of the same key); expiration blocked, so that Bokeh's cleanup of
    unused sessions leaves it alone until :func:`release_session`.
    """
    from bokeh.util.token import generate_session_id

    context = handler.application_context
    session_id = generate_session_id()
    session = await context.create_session_if_needed(session_id, handler.request, token)
    session.block_expiration()
    serialise_ahead(session.document)  # the PULL-DOC reply, unless the page changes
    return session


def adopt_session(handler: Any, session: Any, token: str) -> None:
    """Make the prepared ``session`` the one ``token`` names, with ``handler``'s request.

    What Bokeh's ``create_session_if_needed`` would have set (the session context's id,
    request and token), and Panel's record of the session, moved to the new id.
    """
    from bokeh.server.contexts import _RequestProxy
    from bokeh.util.token import get_session_id, get_token_payload
    from panel.io.state import state

    context = handler.application_context
    old, new = session.id, get_session_id(token)
    session_context = context._session_contexts.pop(old)
    del context._sessions[old]
    payload = get_token_payload(token)
    if "cookies" in payload and "headers" in payload and "Cookie" not in payload["headers"]:
        payload["headers"]["Cookie"] = "; ".join(f"{k}={v}" for k, v in payload["cookies"].items())
    session_context._request = _RequestProxy(
        handler.request,
        arguments=payload.get("arguments"),
        cookies=payload.get("cookies"),
        headers=payload.get("headers"),
    )
    session_context._token = session._token = token
    session_context._id = session._id = new
    context._sessions[new] = session
    context._session_contexts[new] = session_context
    sessions = state.session_info["sessions"]
    if old in sessions:
        sessions[new] = sessions.pop(old)
    session.unblock_expiration()


def release_session(session: Any) -> None:
    """Let Bokeh discard a prepared session nobody adopted (its usual destroy hooks run)."""
    session.request_expiration()
    session.unblock_expiration()
