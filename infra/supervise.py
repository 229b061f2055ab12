"""Keep one command running: restart it whenever it exits, with backoff; stop it with us.

    python -m infra.supervise [--max-backoff 30] -- CMD ARG ...

`ecos infra up watcher` runs the watcher under this, so a watcher that dies (a crash,
the OOM killer, a SIGKILL) comes back by itself. SIGTERM/SIGINT stop the child and this
process. Stdlib only.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone


def _log(message: str) -> None:
    print(f"{datetime.now(timezone.utc).isoformat(timespec='milliseconds')} supervise: {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print("usage: python -m infra.supervise [--max-backoff S] -- CMD ARG ...", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m infra.supervise")
    parser.add_argument("--max-backoff", type=float, default=30.0)
    args, cmd = parser.parse_args(argv[:split]), argv[split + 1 :]
    state: dict = {"stopping": False, "child": None}

    def stop(signum: int, _frame: object) -> None:
        state["stopping"] = True
        if state["child"] is not None and state["child"].poll() is None:
            state["child"].send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    backoff = 1.0
    while not state["stopping"]:
        started = time.monotonic()
        state["child"] = subprocess.Popen(cmd)
        _log(f"started pid {state['child'].pid}: {' '.join(cmd[:4])} …")
        code = state["child"].wait()
        if state["stopping"]:
            break
        lived = time.monotonic() - started
        backoff = 1.0 if lived > 60 else min(2 * backoff, args.max_backoff)  # a crash loop slows down
        _log(f"pid {state['child'].pid} exited with {code} after {lived:.1f} s; restarting in {backoff:g} s")
        until = time.monotonic() + backoff
        while time.monotonic() < until and not state["stopping"]:
            time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
