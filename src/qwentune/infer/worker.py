"""The server's generation worker: one thread owns the model; requests wait in a queue.

Requests that share sampling settings are generated together as one batch (up to
`max_batch_size` rows), which multiplies throughput when several clients ask at once: a
decoding step costs nearly the same for 8 rows as for 1 (see benchmarks/serve_load.py).
Each row still ends on its own (see qwentune.infer.decoding), so a short answer is delivered
as soon as it is complete; new requests start with the next batch. A request whose client went
away (`GenerationRequest.abandon`) is skipped while it waits and ends at its next token while
it generates; `stats` counts what that saved.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from qwentune.infer.decoding import Completion, GenerationRequest
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
        self._counts: Counter = Counter()
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

    def stats(self) -> dict:
        """Requests waiting and generating now, and counts since the start (abandoned: their client left)."""
        with self._changed:
            counts = dict(self._counts)
            generating = sum(not job.request.cancel.is_set() for job in self._running)
            return {
                "waiting": len(self._pending),
                "generating": generating,
                "finished": counts.get("finished", 0),
                "abandoned": counts.get("abandoned", 0),
                "tokens_generated": counts.get("tokens", 0),
                "tokens_after_abandonment": counts.get("tokens_after_abandonment", 0),
            }

    def stop(self) -> None:
        """Without waiting: refuse new requests, fail every request in flight, and stop the batch at its next token."""
        with self._changed:
            self._closed = True
            failed, self._pending = self._pending + self._running, []
            for job in self._running:
                job.request.cancel.set()
            self._changed.notify()
        for job in failed:
            job.on_error(WorkerClosed("the server is shutting down"))

    def close(self) -> None:
        """`stop`, then wait for the generation thread to end (within a decoding step)."""
        self.stop()
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
            self._counts["abandoned"] += len(batch) - len(self._running)
            return self._running

    def _count(self, batch: list[Job], completions: list[Completion]) -> None:
        with self._changed:
            for job, completion in zip(batch, completions):
                self._counts["tokens"] += completion.completion_tokens
                abandoned_at = job.request.abandoned_at
                if completion.finish_reason == "cancelled" and abandoned_at is not None:
                    self._counts["abandoned"] += 1
                    self._counts["tokens_after_abandonment"] += completion.completion_tokens - abandoned_at
                else:
                    self._counts["finished"] += 1

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            if not batch:
                continue
            try:
                self._count(batch, self.engine.run_batch([job.request for job in batch], batch[0].sampling))
            except Exception as exc:  # one failed batch (out of memory, ...) must not stop the server
                for job in batch:
                    job.on_error(exc)
            finally:
                with self._changed:
                    self._running = []
