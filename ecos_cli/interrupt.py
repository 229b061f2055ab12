"""Ctrl-C (or SIGTERM) on a long command: one line, stopped within seconds, every child
process (the simulated devices, Dask workers, Prefect's temporary server) stopped with
it, and a marker in the round's folder (a re-run with the same --round-id resumes it:
each finished step is in the store, and every store write is whole or absent)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def stop_cleanly(on_interrupt: Callable[[], str]) -> Iterator[None]:
    """on_interrupt() records what it must and returns the line to print."""

    def handler(signum: int, _frame: object) -> None:
        for s in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C stops at once, without the tidying
            signal.signal(s, lambda *_: os._exit(130))
        said: list[str] = []

        def tidy() -> None:
            try:
                said.append(on_interrupt())
            except Exception as err:  # noqa: BLE001 - the stop must happen whatever the store says
                said.append(f"interrupted ({type(err).__name__}: {err})")

        worker = threading.Thread(target=tidy, daemon=True)
        worker.start()
        worker.join(3.0)  # an unreachable store must not hold the stop
        line = said[0] if said else "interrupted (the round could not be marked in the store within 3 s)"
        os.write(2, f"\n{line}\n".encode())  # not print(): inside a flow, Prefect turns prints into queued log records
        _cancel_flow_run()
        _stop_children()
        os._exit(130 if signum == signal.SIGINT else 143)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _cancel_flow_run() -> None:
    """With a Prefect server, the run shows Cancelled instead of Running forever."""
    if not os.environ.get("PREFECT_API_URL"):
        return  # the temporary server goes with this process
    try:
        from prefect import get_client
        from prefect.context import FlowRunContext
        from prefect.states import Cancelled

        ctx = FlowRunContext.get()
        if ctx and ctx.flow_run:
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(ctx.flow_run.id, Cancelled(message="interrupted (Ctrl-C)"), force=True)
    except Exception:  # noqa: BLE001 - best effort: the stop itself matters more
        pass


def _stop_children(grace_s: float = 3.0) -> None:
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass
