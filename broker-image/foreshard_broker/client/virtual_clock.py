"""An asyncio event loop with a virtual clock, for deterministic tests and benchmarks of the SDK.

When every task is waiting, time jumps straight to the next timer instead of sleeping, so round
trips and processing times injected with ``asyncio.sleep`` are exact and cost no wall time.  Real
I/O still works (the selector is polled without blocking), but nothing here waits for it: use it
with the in-memory twin, not with real brokers.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _VirtualSelector:
    """Wraps a real selector: a wait for ``timeout`` becomes an instant jump of the virtual clock."""

    def __init__(self, inner: selectors.BaseSelector, loop: VirtualClockLoop) -> None:
        self._inner, self._loop = inner, loop

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = self._inner.select(0)
        if not ready and timeout is not None and timeout > 0:
            self._loop.virtual_now += timeout
        return ready

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self.virtual_now = 0.0
        self._selector = _VirtualSelector(self._selector, self)  # type: ignore[has-type,arg-type]

    def time(self) -> float:
        return self.virtual_now


def run_virtual(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``factory()`` to completion on a fresh virtual-clock loop."""
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(factory())
    finally:
        loop.close()
