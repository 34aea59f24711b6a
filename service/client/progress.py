"""Many requests in flight, answered in input order, with an optional progress bar (rich)."""

from __future__ import annotations

from collections.abc import Callable

from .errors import LossServiceError


def outcome(future, return_exceptions: bool):
    try:
        return future.result()
    except LossServiceError as exc:
        if return_exceptions:
            return exc
        raise


def counted(outcome, advance: Callable[[], None]):
    """``outcome`` after the progress bar has counted it: a consumer that stops at the last item
    (``zip``) then still sees the bar at its total."""
    advance()
    return outcome


class ProgressBar:
    """A rich progress bar as a context manager yielding an ``advance()`` callable."""

    def __init__(self, enabled: bool, total: int | None):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(stderr=True))  # stdout stays clean for the caller's output
        self.bar.start()
        task = self.bar.add_task("scoring", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()


async def async_outcome(task, return_exceptions: bool):
    try:
        return await task
    except LossServiceError as exc:
        if return_exceptions:
            return exc
        raise
