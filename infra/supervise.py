"""Keep one command running: restart it whenever it exits, with backoff; stop it with us.

    python -m infra.supervise [--max-backoff 30] [--state FILE] -- CMD ARG ...

`ecos infra up worker|gpu-worker|watcher` runs each under this, so a worker or watcher
that dies (a crash, the OOM killer, a SIGKILL) comes back by itself. SIGTERM/SIGINT stop
the child and this process. With --state, FILE (JSON, replaced atomically) says which
child runs and how often it was restarted, for `ecos infra status`. Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _log(message: str) -> None:
    print(f"{_now()} supervise: {message}", flush=True)


def _write_state(path: Path | None, state: dict) -> None:
    if path is None:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)  # readers never see half a file
    except OSError as err:  # the run dir gone: supervising matters more than reporting
        _log(f"could not write {path}: {err}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print("usage: python -m infra.supervise [--max-backoff S] [--state FILE] -- CMD ARG ...", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m infra.supervise")
    parser.add_argument("--max-backoff", type=float, default=30.0)
    parser.add_argument("--state", type=Path, default=None)
    args, cmd = parser.parse_args(argv[:split]), argv[split + 1 :]
    flags: dict = {"stopping": False, "child": None}
    state = {"pid": os.getpid(), "child": None, "started_at": None, "restarts": 0, "last_exit": None}

    def stop(signum: int, _frame: object) -> None:
        flags["stopping"] = True
        if flags["child"] is not None and flags["child"].poll() is None:
            flags["child"].send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    backoff = 1.0
    while not flags["stopping"]:
        started = time.monotonic()
        flags["child"] = child = subprocess.Popen(cmd)
        state.update(child=child.pid, started_at=_now())
        _write_state(args.state, state)
        _log(f"started pid {child.pid}: {' '.join(cmd[:4])} …")
        code = child.wait()
        if flags["stopping"]:
            break
        lived = time.monotonic() - started
        backoff = 1.0 if lived > 60 else min(2 * backoff, args.max_backoff)  # a crash loop slows down
        _log(f"pid {child.pid} exited with {code} after {lived:.1f} s; restarting in {backoff:g} s")
        state.update(child=None, restarts=state["restarts"] + 1,
                     last_exit={"pid": child.pid, "code": code, "at": _now(), "lived_s": round(lived, 1)})  # fmt: skip
        _write_state(args.state, state)
        until = time.monotonic() + backoff
        while time.monotonic() < until and not flags["stopping"]:
            time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
