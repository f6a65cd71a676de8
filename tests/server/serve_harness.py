"""Starting and stopping `shoal serve` for the server tests: on 127.0.0.1, on a
port the kernel picks (--port 0, read back from the "listening on" line),
under mpirun when asked. Every server is stopped with SIGTERM at the end of
its test and must exit 0 having said "stopped" (a drain that hangs or
crashes fails the test that started it)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402


class Server:
    def __init__(self, args, np_=1, env=None, timeout=60):
        cmd = [h.shoal_bin(), "serve", "--port", "0"] + [str(a) for a in args]
        if np_ > 1:
            cmd = [h.mpirun_bin()] + h.MPIRUN_FLAGS + ["-np", str(np_)] + cmd
        self.cmd = cmd
        self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  env=env, start_new_session=True)
        self.err_lines: list[str] = []
        self.port = self.pid = None
        ready = threading.Event()

        def pump():
            for raw in self.p.stderr:
                line = raw.decode(errors="replace")
                self.err_lines.append(line)
                m = re.search(r"listening on http://127\.0\.0\.1:(\d+) .*pid (\d+)", line)
                if m:
                    self.port, self.pid = int(m.group(1)), int(m.group(2))
                    ready.set()
            ready.set()

        self.pump = threading.Thread(target=pump, daemon=True)
        self.pump.start()
        ready.wait(timeout)
        if self.port is None:
            self.kill()
            pytest.fail(f"{' '.join(cmd)} did not start:\n{self.err}")
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def err(self) -> str:
        return "".join(self.err_lines)

    def stop(self, timeout=60) -> int:
        """SIGTERM to rank 0 (the pid it printed), then the exit status (mpirun's under mpirun)."""
        if self.p.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"shoal serve did not stop within {timeout} s of SIGTERM:\n{self.err[-3000:]}")
        self.pump.join(5)
        return rc

    def kill(self):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait(10)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_until(cond, timeout=20.0, step=0.05) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(step)
    return False


def at_once(items, one, timeout=180.0):
    """one(index, item) for every item, each on a thread of its own, all started
    together (a barrier): the requests of a test arrive at the same time. The
    failures, as "item: exception", [] when none."""
    import threading
    errors = []
    start = threading.Barrier(len(items))

    def run(i, item):
        try:
            start.wait(30)
            one(i, item)
        except Exception as e:  # noqa: BLE001 - reported to the caller
            errors.append(f"{item!r}: {e!r}")

    ts = [threading.Thread(target=run, args=(i, it)) for i, it in enumerate(items)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout)
    return errors
