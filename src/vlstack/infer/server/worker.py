"""The one thread that owns the Engine: it gathers requests arriving within a few milliseconds
into one batch, and streams tokens back to the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from typing import Literal

from vlstack.infer.engine import Engine, Request
from vlstack.infer.server.config import ApiError


@dataclass
class _Job:
    request: Request
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


@dataclass
class StreamStarted:
    prompt_tokens: int


@dataclass
class StreamFinished:
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


@dataclass
class StreamJob:
    """A streaming request: the worker hands its events to the event loop as they come."""

    request: Request
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    """StreamStarted, then text pieces, then StreamFinished; or an exception instead of the rest."""
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: StreamStarted | str | StreamFinished | Exception) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled.set()


_STOP = object()


class BatchWorker:
    """The one thread that touches the Engine.

    It takes the first queued request, waits up to `wait_s` for more (up to the Engine's
    max_batch_size) and generates them together. A streaming request runs alone through
    `Engine.stream`. A request fails alone, never its batch: when a batch fails, each of its
    requests is generated on its own, so only the bad one gets the exception. A request whose
    `cancel` is set (its client went away, or it timed out) is dropped before it starts and ends
    at the next decoding step after.
    """

    def __init__(self, engine: Engine, wait_s: float, max_queued: int):
        self.engine = engine
        self.wait_s = wait_s
        self.max_queued = max_queued
        self._queue: queue.Queue = queue.Queue()
        self._held: _Job | StreamJob | object | None = None
        self._thread = threading.Thread(target=self._run, name="vlstack-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, request: Request) -> concurrent.futures.Future:
        """Queue a request; the future resolves to its Result (or the Engine's exception)."""
        job = _Job(request)
        self._put(job)
        return job.future

    def submit_stream(self, request: Request) -> StreamJob:
        """Queue a streaming request; call from the event loop that will read its events."""
        job = StreamJob(request, asyncio.get_running_loop())
        self._put(job)
        return job

    def _put(self, job: _Job | StreamJob) -> None:
        if self._queue.qsize() >= self.max_queued:
            raise ApiError(503, f"the server is busy ({self.max_queued} requests are waiting); retry shortly",
                           code="server_busy")
        self._queue.put(job)

    def _run(self) -> None:
        while True:
            job = self._held if self._held is not None else self._queue.get()
            self._held = None
            if job is _STOP:
                return
            if isinstance(job, StreamJob):
                self._stream(job)
            else:
                self._generate(self._gather(job))

    def _gather(self, first: _Job) -> list[_Job]:
        batch = [first]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.engine.config.max_batch_size:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if not isinstance(job, _Job):
                self._held = job  # a streaming request or the stop signal goes next, alone
                break
            batch.append(job)
        return batch

    def _generate(self, batch: list[_Job]) -> None:
        ready = [job for job in batch if job.future.set_running_or_notify_cancel() and not _cancelled(job.request)]
        try:
            results = self.engine.generate([job.request for job in ready]) if ready else []
        except Exception as exc:
            if len(ready) == 1:
                ready[0].future.set_exception(exc)
            else:
                for job in ready:  # find the bad one: the others still get their answers
                    self._generate_alone(job)
            return
        for job, result in zip(ready, results):
            job.future.set_result(result)

    def _generate_alone(self, job: _Job) -> None:
        try:
            job.future.set_result(self.engine.generate([job.request])[0])
        except Exception as exc:
            job.future.set_exception(exc)

    def _stream(self, job: StreamJob) -> None:
        if job.cancelled.is_set():
            return
        try:
            prompt = job.request.prompt_ids or self.engine.prompt_ids(job.request)
            job.emit(StreamStarted(len(prompt)))
            generated = self.engine.stats.generated_tokens
            with closing(self.engine.stream(job.request)) as pieces:
                for piece in pieces:
                    if job.cancelled.is_set():
                        return
                    job.emit(piece)
        except Exception as exc:
            job.emit(exc)
            return
        # Engine.stream does not report its finish reason; hitting the budget is read as "length"
        completion = self.engine.stats.generated_tokens - generated
        job.emit(StreamFinished(completion, "length" if completion >= job.request.params.max_new_tokens else "stop"))


def _cancelled(request: Request) -> bool:
    return request.cancel is not None and request.cancel.is_set()
