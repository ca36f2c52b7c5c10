"""Minimal HTTP endpoint for kubelet probes and Prometheus: /healthz, /readyz, /metrics.

A few lines of asyncio instead of a web framework: three GET routes, no bodies to parse.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST

Check = Callable[[], str | None]  # None when fine, else the reason


class HttpEndpoint:
    def __init__(self, render: Callable[[], bytes], live: Check, ready: Check) -> None:
        self.render = render  # the /metrics page
        self.live = live
        self.ready = ready

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=10)
            while (await asyncio.wait_for(reader.readline(), timeout=10)) not in (b"\r\n", b"\n", b""):
                pass  # headers are not needed
            status, content_type, body = self.route(request_line.decode("latin-1").split())
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def route(self, parts: list[str]) -> tuple[str, str, bytes]:
        if len(parts) < 2 or parts[0] != "GET":
            return "405 Method Not Allowed", "text/plain", b"only GET is served\n"
        path = parts[1].split("?", 1)[0]
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, self.render()
        if path in ("/healthz", "/readyz"):
            problem = (self.live if path == "/healthz" else self.ready)()
            if problem is None:
                return "200 OK", "text/plain", b"ok\n"
            return "503 Service Unavailable", "text/plain", problem.encode() + b"\n"
        return "404 Not Found", "text/plain", b"routes: /healthz /readyz /metrics\n"

    async def start(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.handle, host, port)
