"""What keeps one server healthy: a bounded body, a token, a bounded number of jobs, a timeout.

The model runs in a fixed pool of worker threads. A request is admitted only while
fewer than ``max_concurrent + max_queued`` jobs are running or waiting; beyond that
the answer is 503 with ``Retry-After``, at once, rather than a pile-up. A job that
runs past the timeout is answered 504, but keeps its slot until its thread is done,
so the bound on work in progress is real.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Busy(Exception):
    """Every slot is taken: the client should retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy; retry in {retry_after} s")
        self.retry_after = retry_after


class TooSlow(Exception):
    """The job ran past the request timeout (HTTP 504)."""


class JobPool:
    """A fixed pool of worker threads with bounded admission and a per-job timeout."""

    def __init__(self, max_concurrent: int, max_queued: int, timeout_s: float) -> None:
        self.max_concurrent = max_concurrent
        self.capacity = max_concurrent + max_queued
        self.timeout_s = timeout_s
        self._admitted = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_concurrent, thread_name_prefix="twinsight-serve")

    @property
    def admitted(self) -> int:
        """Jobs running or waiting now."""
        return self._admitted

    def _admit(self) -> None:
        with self._lock:
            if self._admitted >= self.capacity:
                raise Busy(retry_after=max(1, round(self.timeout_s / 10)))
            self._admitted += 1

    def _release(self, _: Future) -> None:
        with self._lock:
            self._admitted -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on a worker thread; Busy when full, TooSlow past the timeout."""
        self._admit()
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._release(None)  # type: ignore[arg-type]
            raise
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            future.cancel()  # a job still waiting is dropped; a running one finishes alone
            raise TooSlow(f"the request took longer than {self.timeout_s:g} s") from None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


async def _send_error(send: Send, status: int, message: str, headers: dict | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before it is parsed.

    A declared Content-Length over the limit is refused at once; a chunked body is read
    up to the limit and then refused, so no more than ``max_bytes`` is ever held.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"the upload is larger than this server's limit of {self.max_bytes / 2**20:g} MiB"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_error(send, 413, self._message())
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await _send_error(send, 413, self._message())
                return
        body, replayed = b"".join(chunks), False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class TokenGuard:
    """ASGI middleware: with a token set, every ``/api`` request must carry it (else 401).

    As ``Authorization: Bearer TOKEN``, or as ``?token=TOKEN`` for what a page cannot
    send headers with (image sources). Compared in constant time.
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    def _allowed(self, scope: Scope) -> bool:
        from urllib.parse import parse_qs

        auth = _header(scope, b"authorization") or ""
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if given is None:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = (query.get("token") or [None])[0]
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        protected = scope["type"] == "http" and scope.get("path", "").startswith("/api")
        if self.token and protected and not self._allowed(scope):
            await _send_error(
                send,
                401,
                "this server needs its token: send 'Authorization: Bearer TOKEN' or ?token=TOKEN",
                {"WWW-Authenticate": "Bearer"},
            )
            return
        await self.app(scope, receive, send)
