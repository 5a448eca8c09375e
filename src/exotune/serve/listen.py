"""Connections of ``exotune serve`` (uvicorn, h11): cut the slow, cap the many.

uvicorn closes an idle kept-alive connection after ``timeout_keep_alive`` and answers 503 past
``limit_concurrency``, but a connection that sends its request line and headers a byte at a
time stays open for good, and each holds a file descriptor. The protocol here closes a
connection whose request head has not arrived ``header_timeout_s`` after the connection opened
(or, on a kept-alive connection, after the next request's first byte), and closes new
connections at once beyond ``max_connections``. Bodies are timed by the app
(``ServeConfig.body_timeout_s``).
"""

from __future__ import annotations

import contextlib
import logging

from exotune.serve.config import ListenConfig

log = logging.getLogger("exotune.serve")


def guarded_protocol(listen: ListenConfig):
    """uvicorn's h11 protocol class with a request-head timeout and a connection cap."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._head_timer = None
            if len(self.connections) > listen.max_connections:
                log.warning(
                    "%d connections open: closing a new one from %s",
                    len(self.connections) - 1,
                    self.client[0] if self.client else "?",
                )
                transport.close()
                return
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            # the first bytes of a request on a kept-alive connection: its head is timed from now
            if self._head_timer is None and self.cycle is not None and self.cycle.response_complete:
                self._arm_head_timer()
            super().data_received(data)

        def on_response_complete(self) -> None:
            self._cancel_head_timer()  # idle from now: uvicorn's keep-alive timer is the one that runs
            super().on_response_complete()

        def connection_lost(self, exc) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _cancel_head_timer(self) -> None:
            if getattr(self, "_head_timer", None) is not None:
                self._head_timer.cancel()
            self._head_timer = None

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(listen.header_timeout_s, self._head_deadline, self.cycle)

        def _head_deadline(self, cycle) -> None:
            self._head_timer = None
            if self.cycle is cycle and not self.transport.is_closing():  # no request began since
                log.info(
                    "closing a connection from %s: no request head within %g s",
                    self.client[0] if self.client else "?",
                    listen.header_timeout_s,
                )
                with contextlib.suppress(h11.LocalProtocolError):
                    self.conn.send(h11.ConnectionClosed())
                self.transport.close()

    return GuardedH11Protocol


def uvicorn_config(app, host: str, port: int, listen: ListenConfig | None = None, log_level: str = "info"):
    import uvicorn

    listen = listen or ListenConfig()
    # uvicorn's limit counts the asking connection too: + 1, so each of max_connections is served
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=guarded_protocol(listen),
        timeout_keep_alive=listen.keep_alive_s,
        limit_concurrency=listen.max_connections + 1,
        h11_max_incomplete_event_size=listen.max_header_bytes,
    )
