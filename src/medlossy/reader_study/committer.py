"""Answers from many raters committed together, off the event loop (group commit).

Data flow: a request handler awaits ``Committer.record(rater, pair, answer, ms)`` -> the answer
joins the pending batch -> one worker thread writes the whole batch in one transaction
(``Database.record_many``: one fsync for all of them) -> every waiting request is released
with the outcome. A request is acknowledged only after its answer's transaction committed,
so nothing acknowledged is lost; if the database stays locked past its busy timeout the
whole batch fails with ``DatabaseBusy`` and nothing of it is stored (the rater is asked to
send again). The event loop never waits on SQLite, so other routes keep answering.

Why by hand: SQLite serialises writers anyway; with one fsync per answer, 50 raters posting
at once queue 50 fsyncs behind each other. No library here batches SQLite commits for an
asyncio server.
"""

from __future__ import annotations

import asyncio

import anyio

from medlossy.reader_study.db import Database, DatabaseBusy

MAX_BATCH = 256


class Committer:
    """Batches ``record`` calls made on one event loop into shared transactions."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._pending: list[tuple[tuple[int, str, str, int | None], asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self._limiter = anyio.CapacityLimiter(1)  # one writer thread: SQLite has one writer

    async def record(self, rater_id: int, pair_id: str, answer: str,
                     response_ms: int | None = None) -> None:
        """Return once the answer is committed; raise ``DatabaseBusy`` if it was not."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append(((rater_id, pair_id, answer, response_ms), future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        await asyncio.shield(future)  # a client that hangs up does not cancel the others

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                outcomes = await anyio.to_thread.run_sync(
                    self._write, [item for item, _ in batch], limiter=self._limiter)
            except BaseException as error:  # handed to every waiting request, then re-raised
                outcomes = [error] * len(batch)
                if not isinstance(error, Exception):
                    self._settle(batch, outcomes)
                    raise
            self._settle(batch, outcomes)

    @staticmethod
    def _settle(batch: list[tuple[tuple[int, str, str, int | None], asyncio.Future]],
                outcomes: list[BaseException | None]) -> None:
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if outcome is None:
                future.set_result(None)
            else:
                future.set_exception(outcome)

    def _write(self, items: list[tuple[int, str, str, int | None]]) -> list[BaseException | None]:
        """Commit ``items`` together; the outcome of each (None: committed)."""
        try:
            self.database.record_many(items)
            return [None] * len(items)
        except DatabaseBusy:
            raise
        except Exception as error:
            if len(items) == 1:
                return [error]
        # One bad item must not fail the others: commit them one by one instead.
        outcomes: list[BaseException | None] = []
        for item in items:
            try:
                self.database.record_many([item])
                outcomes.append(None)
            except Exception as error:
                outcomes.append(error)
        return outcomes
