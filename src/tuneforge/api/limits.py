"""Limits at the door of the API: the size of a request body, and how fast one client address may fail to
authenticate.

`BodyLimit` is plain ASGI middleware, so it counts the bytes as they arrive (a chunked body has no Content-Length)
and refuses before a route parses anything: a 60 MB JSON job body would otherwise be parsed, validated and stored
twice. The dataset upload route streams to disk with its own, larger limit (`max_upload_bytes`, api/uploads.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UPLOAD_PATHS = ("/v1/datasets",)  # POST /v1/datasets: multipart, limited by max_upload_bytes while it streams


def _message(limit: int) -> str:
    return f"body: request body larger than this server's limit of {limit:,} bytes (TUNEFORGE_MAX_REQUEST_BYTES)"


class BodyTooLarge(HTTPException):
    """Raised from `receive` while a route reads the body; an HTTPException so that FastAPI's body parsing passes
    it on as it is (it turns other exceptions into 400) and the app answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _message(limit), headers={"Connection": "close"})


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"] == "POST" and scope["path"].rstrip("/") in UPLOAD_PATHS):
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                return await self._refuse(send, limit)
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        body = json.dumps({"detail": _message(limit)}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class AuthThrottle:
    """Failed authentications per client address in a sliding minute. Past `per_minute` failures the address gets
    429 (even with a right key) until the oldest failure is a minute old: guessing deployment tokens or API keys
    then runs at `per_minute` tries a minute instead of hundreds a second."""

    WINDOW = 60.0
    MAX_ADDRESSES = 100_000  # bounded memory under a spray of addresses: the oldest are forgotten first

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        q = self._failures.get(address)
        if q is None:
            return None
        while q and q[0] <= now - self.WINDOW:
            q.popleft()
        if not q:
            del self._failures[address]
            return None
        return q

    def retry_after(self, address: str) -> int | None:
        """Seconds until `address` may try again, or None when it may now."""
        now = time.monotonic()
        with self._lock:
            q = self._recent(address, now)
            if q is None or len(q) < self.per_minute:
                return None
            return max(1, int(q[0] + self.WINDOW - now) + 1)

    def failed(self, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            q = self._recent(address, now)
            if q is None:
                if len(self._failures) >= self.MAX_ADDRESSES:
                    self._failures.pop(next(iter(self._failures)))
                q = self._failures[address] = deque()
            q.append(now)


def client_address(request: HTTPConnection) -> str:
    return request.client.host if request.client else "unknown"


def throttled(throttle: AuthThrottle, request: HTTPConnection) -> HTTPException | None:
    """An HTTPException(429) when the request's address has failed too often, else None."""
    wait = throttle.retry_after(client_address(request))
    if wait is None:
        return None
    return HTTPException(
        429,
        f"too many failed authentications from {client_address(request)}: try again in "
        f"{wait} s (this server allows {throttle.per_minute} a minute: "
        "TUNEFORGE_AUTH_FAILURES_PER_MINUTE)",
        headers={"Retry-After": str(wait)},
    )
