"""A loopback server on its own event loop in a background thread, for tests and benchmarks in one process."""

from __future__ import annotations

import asyncio
import threading


class ThreadedServer:
    """Subclasses open their server in `_open(port)` (setting `self.port`) and close it in `_close()`."""

    port: int | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    async def _open(self, port: int) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    def start(self, port: int = 0):
        ready = threading.Event()

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._open(port))
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class AiohttpServer(ThreadedServer):
    """A ThreadedServer whose subclass gives its aiohttp application (`app()`) on 127.0.0.1."""

    _runner = None

    def app(self):
        raise NotImplementedError

    async def _open(self, port: int) -> None:
        from aiohttp import web

        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        await self._runner.cleanup()
