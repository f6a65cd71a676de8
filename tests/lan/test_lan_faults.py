"""A link that goes silent between two emulated hosts (tests/lan/lan.sh):
iptables DROP between the namespaces, in both directions, in the middle of a
generation: packets vanish, nothing is reset, so every rank would wait for
ever. With --comm-timeout 4, each rank must end within the timeout of the
drop (plus the time to notice and exit), rank 0 naming the rank it waited
for; the same while a server is idle between requests (rank 0's pings stop
reaching rank 1). Skips, saying why, where the LAN cannot be emulated.
"""
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import shoal_harness as h  # noqa: E402
from test_lan_infra import lan, up, usable  # noqa: E402,F401

TIMEOUT = 4  # --comm-timeout, seconds


@pytest.fixture(scope="module")
def lan2(usable):  # noqa: F811
    lan_id, _ = up(2, "--rate", "0", "--delay-ms", "0", "--id", f"pf{os.getpid()}", "--owner", os.getpid())
    yield lan_id
    lan("down", lan_id, check=False)


def ranks_with(marker):
    """{world rank: pid} of the processes started with SHOAL_FAULT_MARK=marker (all hosts share
    this machine's process table)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"SHOAL_FAULT_MARK={marker}".encode() not in env:
            continue
        for e in env:
            if e.startswith(b"OMPI_COMM_WORLD_RANK="):
                out[int(e.split(b"=")[1])] = int(d.name)
    return out


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] not in ("Z", "X")
    except OSError:
        return False


def silence(lan_id, on):
    """DROP every packet between host 0 (10.77.0.1) and host 1 (10.77.0.2), both ways, or stop."""
    op = "-I" if on else "-D"
    for chain, flag in (("INPUT", "-s"), ("OUTPUT", "-d")):
        lan("exec", lan_id, 1, "iptables", "-w", op, chain, flag, "10.77.0.1", "-j", "DROP")


def run_until_silence(lan_id, cmd_args, before_drop):
    """Starts cmd_args across the 2 hosts, waits before_drop(), cuts the link, and returns
    (seconds each rank lived after the cut, mpirun's stderr so far)."""
    mark = uuid.uuid4().hex
    mpirun = subprocess.Popen([str(HERE / "lan.sh"), "run", lan_id, "-np", "2", "-x", f"SHOAL_FAULT_MARK={mark}",
                               h.shoal_bin(), *map(str, cmd_args)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        pids = {}
        deadline = time.time() + 60
        while time.time() < deadline and len(pids) < 2:
            time.sleep(0.2)
            pids = ranks_with(mark)
        assert len(pids) == 2, f"ranks not found: {pids}"
        before_drop(mpirun)
        assert mpirun.poll() is None and all(alive(p) for p in pids.values()), "the job ended before the cut"
        silence(lan_id, True)
        t0 = time.time()
        lived = {}
        while time.time() - t0 < 4 * TIMEOUT and len(lived) < 2:
            for r, pid in pids.items():
                if r not in lived and not alive(pid):
                    lived[r] = time.time() - t0
            time.sleep(0.05)
        for r, pid in pids.items():
            if r not in lived:
                os.kill(pid, 9)
        err = b""
        try:  # mpirun may wait for the daemon behind the dead link: it is killed, not awaited
            _, err = mpirun.communicate(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(mpirun.pid, 9)
            _, err = mpirun.communicate()
        return lived, err.decode(errors="replace")
    finally:
        silence(lan_id, False)
        if mpirun.poll() is None:
            os.killpg(mpirun.pid, 9)
            mpirun.communicate()


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    return h.synth_slow(tmp_path_factory.mktemp("lanfault") / "slow.gguf")


def check_ended(lived, err):
    for r in (0, 1):
        assert r in lived, f"rank {r} was still running {4 * TIMEOUT} s after the link went silent:\n{err[-3000:]}"
        assert lived[r] < TIMEOUT + 3, f"rank {r} lived {lived[r]:.1f} s after the cut (--comm-timeout {TIMEOUT})"
    # rank 1's words go to mpirun over the dead link; rank 0's are local
    assert "rank 0 waited" in err and "rank 1" in err and "stopped answering" in err, err[-3000:]
    print(f"after the cut: rank 0 ended in {lived[0]:.1f} s, rank 1 in {lived[1]:.1f} s")


def test_silent_link_mid_generation(lan2, slow_model):
    """tp 2 across the two hosts, generating when the link goes silent."""
    lived, err = run_until_silence(lan2, ["run", "-m", slow_model, "-n", 100000, "-c", 8192, "--ignore-eos", "--tp",
                                          2, "-t", 1, "-q", "--comm-timeout", TIMEOUT],
                                   lambda p: time.sleep(2.5))
    check_ended(lived, err)


def test_silent_link_idle_server(lan2, slow_model):
    """shoal serve, tp 2, no request: rank 0's pings stop reaching rank 1, and rank 1's barrier
    answers stop reaching rank 0. The server listens inside host 0 only; nothing is sent to it."""
    def started(p):
        line = b""
        deadline = time.time() + 60
        while b"listening on" not in line and time.time() < deadline:
            line = p.stderr.readline()
            assert line, "the server ended before it listened"
        time.sleep(1)
    lived, err = run_until_silence(lan2, ["serve", "-m", slow_model, "-t", 1, "--tp", 2, "--port", 0,
                                          "--comm-timeout", TIMEOUT], started)
    check_ended(lived, err)
