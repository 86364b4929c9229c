"""One background thread that computes the newest request and forgets the ones it replaced.

The explorer must not compute on the kernel's main thread: while it does, the kernel cannot
read the next click, so clicks queue up and the controls run ahead of the picture. Nor should
it queue: by the time five slider steps are computed the user wants only the last. So a
:class:`LatestWorker` holds at most one *pending* request besides the one running; a new
:meth:`~LatestWorker.submit` replaces the pending one, and a result is handed to its ``done``
callback only if no newer request was submitted meanwhile (a stale result is dropped, never
drawn).

Requests run in *lanes* (e.g. "perturbation" and "segment"): newest-wins holds within a
lane, so a slider move does not throw away a running segmentation. Lanes share the one thread
and run in the order they were asked for.

``background=False`` runs every request at once on the caller's thread (the tests, and code
that wants the result before it goes on).
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class LatestWorker:
    """See the module docstring.

    Args:
        background: compute on a worker thread (True) or inline (False).
        on_start: called on the worker thread before its first request (e.g. to set its torch
            thread count: torch's count is per thread).
    """

    def __init__(self, background: bool = True, on_start: Callable[[], object] | None = None):
        self.background = background
        self._on_start = on_start
        self._cond = threading.Condition()
        self._pending: dict[str, tuple] = {}   # lane -> (generation, job, done), oldest first
        self._generation: dict[str, int] = {}  # lane -> generation of its newest request
        self._running: str | bool = False      # the running request's lane
        self._thread: threading.Thread | None = None
        self.dropped = 0                 # results dropped because a newer request came
        self.replaced = 0                # pending requests replaced before they started

    def is_current(self, lane: str, generation: int) -> bool:
        return generation == self._generation.get(lane)

    def submit(self, job: Callable[[], object],
               done: Callable[[object, BaseException | None], object],
               lane: str = "default") -> int:
        """Asks for ``job()``; ``done(result, error)`` follows if it is still the newest
        request of its ``lane`` when it ends. Returns the request's generation."""
        with self._cond:
            generation = self._generation[lane] = self._generation.get(lane, 0) + 1
            if self.background:
                if self._pending.pop(lane, None) is not None:
                    self.replaced += 1
                self._pending[lane] = (generation, job, done)
                self._start()
                self._cond.notify_all()
                return generation
        self._run(lane, generation, job, done)   # inline, outside the lock
        return generation

    def busy(self, lane: str | None = None) -> bool:
        """Whether a request (of ``lane``, or any) is running or waiting."""
        with self._cond:
            if lane is not None:
                return lane in self._pending or self._running == lane
            return bool(self._running) or bool(self._pending)

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until nothing is running or pending; False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._running and not self._pending,
                                       timeout)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="emerdiff-explorer",
                                            daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        if self._on_start is not None:
            self._on_start()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending))
                lane = next(iter(self._pending))
                generation, job, done = self._pending.pop(lane)
                self._running = lane
            try:
                self._run(lane, generation, job, done)
            finally:
                with self._cond:
                    self._running = False
                    self._cond.notify_all()

    def _run(self, lane: str, generation: int, job, done) -> None:
        try:
            result, error = job(), None
        except Exception as exc:  # noqa: BLE001 - shown to the user by ``done``
            result, error = None, exc
        if self.is_current(lane, generation):
            done(result, error)
        else:
            self.dropped += 1
