"""The server's generation worker: one thread owns the model; requests wait in a queue.

Requests that share sampling settings are generated together as one batch (up to
`max_batch_size` rows), which multiplies throughput when several clients ask at once: a
decoding step costs nearly the same for 8 rows as for 1 (see benchmarks/serve_load.py).
Each row still ends on its own (see qwentune.infer.decoding), so a short answer is delivered
as soon as it is complete; new requests start with the next batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from qwentune.infer.decoding import GenerationRequest
from qwentune.infer.settings import Sampling


class WorkerClosed(RuntimeError):
    """The server is shutting down; the request was not generated."""


@dataclass(eq=False)  # jobs are told apart by identity
class Job:
    request: GenerationRequest
    sampling: Sampling
    on_error: Callable[[Exception], None]


class GenerationWorker:
    def __init__(self, engine, max_batch_size: int = 8):
        self.engine = engine
        self.max_batch_size = max_batch_size
        self._pending: list[Job] = []
        self._running: list[Job] = []
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="qwentune-generation", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._changed:
            if self._closed:
                raise WorkerClosed("the server is shutting down")
            self._pending.append(job)
            self._changed.notify()

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        """Stop the batch in progress, fail the requests still waiting, and end the thread."""
        with self._changed:
            self._closed = True
            abandoned, self._pending = self._pending, []
            for job in self._running:
                job.request.cancel.set()
            self._changed.notify()
        for job in abandoned:
            job.on_error(WorkerClosed("the server is shutting down"))
        if self._thread.is_alive():
            self._thread.join()

    def _next_batch(self) -> list[Job] | None:
        """The oldest waiting job and the next ones with its sampling settings; None once closed."""
        with self._changed:
            self._changed.wait_for(lambda: self._pending or self._closed)
            if self._closed:
                return None
            sampling = self._pending[0].sampling
            batch = [job for job in self._pending if job.sampling == sampling][: self.max_batch_size]
            self._pending = [job for job in self._pending if job not in batch]
            # A client that left while waiting needs no answer.
            self._running = [job for job in batch if not job.request.cancel.is_set()]
            return self._running

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            if not batch:
                continue
            try:
                self.engine.run_batch([job.request for job in batch], batch[0].sampling)
            except Exception as exc:  # one failed batch (out of memory, ...) must not stop the server
                for job in batch:
                    job.on_error(exc)
            finally:
                with self._changed:
                    self._running = []
