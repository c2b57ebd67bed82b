"""The HTTP protocol behind ``reader serve``: uvicorn's h11 protocol with a request deadline.

uvicorn closes a connection left idle after a response (``timeout_keep_alive``) but has no
limit on receiving a request: a client that opens a TCP connection and sends nothing, half a
request line, headers without their end or a body that stops keeps it open for good (19,900
such connections held 276 MB). Its ``limit_concurrency`` only answers new requests with 503
past the limit, which would lock the raters out instead. ``DeadlineProtocol`` closes a
connection whose request has not arrived whole (head and body) within ``request_timeout``
seconds of the connection opening, or of the request's first byte on a kept-alive one.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

#: The client's states while a request is (or may be) on its way.
_RECEIVING = (h11.IDLE, h11.SEND_BODY)


class DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol; a request must arrive whole within ``request_timeout``
    seconds (a subclass from ``deadline_protocol`` sets it)."""

    request_timeout: float

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state in _RECEIVING:
            if self._deadline is None:  # the first byte of a request on a kept-alive one
                self._arm()
        else:  # received whole (or the connection is ending): the app has it now
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.request_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def deadline_protocol(request_timeout: float) -> type[DeadlineProtocol]:
    """The protocol class to pass as uvicorn's ``http`` for this deadline (seconds)."""
    if not request_timeout > 0:
        raise ValueError(f"the request timeout must be positive, got {request_timeout}")
    return type("DeadlineProtocol", (DeadlineProtocol,), {"request_timeout": request_timeout})
