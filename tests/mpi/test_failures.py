"""Failures on one rank end every rank, quickly, with a message that names
the rank: a bad file on one rank only (refused while loading), and a rank
killed in the middle of generating (mpirun ends the job)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402


def per_rank(tmp_path, good, bad, bad_rank, extra):
    """A launcher script: rank bad_rank opens bad, the others good."""
    script = tmp_path / "per_rank.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$OMPI_COMM_WORLD_RANK" = "{bad_rank}" ]; then m="{bad}"; else m="{good}"; fi\n'
        f'exec "{h.shoal_bin()}" run -m "$m" ' + " ".join(str(a) for a in extra) + "\n")
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_bad_file_on_one_rank(damage, tmp_path):
    good = h.testdata("stories260K.gguf")
    bad = tmp_path / "bad.gguf"
    data = good.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"GGUF" + os.urandom(4096))
    script = per_rank(tmp_path, good, bad, 1, ["-n", 16, "--tp", 2, "-q"])
    cmd = [h.mpirun_bin()] + h.MPIRUN_FLAGS + ["-np", "2", str(script)]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, timeout=60)
    took = time.time() - t0
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0, "a bad file on rank 1 went unnoticed"
    assert took < 20, f"took {took:.1f} s to stop"
    assert "shoal run: error: rank 1:" in err and str(bad) in err, err
    assert "shoal run: error: rank 1:" in err.split("\n")[0] or err.count("rank 1") >= 2, err
    assert p.stdout == b"", "rank 0 generated text anyway"


def rank_pids(mpirun_pid):
    """The PIDs of mpirun's children by their OMPI_COMM_WORLD_RANK."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text().split()
            if int(stat[3]) != mpirun_pid:
                continue
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for e in env:
            if e.startswith(b"OMPI_COMM_WORLD_RANK="):
                out[int(e.split(b"=")[1])] = int(d.name)
    return out


@pytest.mark.parametrize("victim", [1, 2])
def test_killed_rank_ends_the_job(victim, tmp_path):
    """A rank killed mid-generation: every rank is gone within seconds, and
    the output names the dead rank. 1: tensor-parallel partner of rank 0;
    2: a later pipeline stage."""
    model = tmp_path / "slow.gguf"
    h.run(["synth", "-o", model, "--dim", 512, "--layers", 8, "--heads", 8, "--kv-heads", 4,
           "--ffn", 1536, "--type", "f32", "--ctx", 8192])
    cmd = [h.mpirun_bin()] + h.MPIRUN_FLAGS + [
        "-np", "4", h.shoal_bin(), "run", "-m", str(model), "-n", "100000", "-c", "8192",
        "--ignore-eos", "--tp", "2", "--pp", "2", "-q"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        pids = {}
        deadline = time.time() + 30
        while time.time() < deadline and len(pids) < 4:
            time.sleep(0.2)
            pids = rank_pids(p.pid)
        assert len(pids) == 4, f"ranks not found: {pids}"
        time.sleep(2.0)  # generating by now
        assert p.poll() is None, "the job ended before the kill"
        os.kill(pids[victim], signal.SIGKILL)
        t0 = time.time()
        out, err = p.communicate(timeout=30)
        took = time.time() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode != 0
    assert took < 15, f"{took:.1f} s for the job to end after rank {victim} died"
    text = err.decode(errors="replace")
    assert f"rank {victim}" in text, text[-3000:]
    def alive(pid):
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] not in ("Z", "X")
        except OSError:
            return False
    deadline = time.time() + 5  # a killed process may take a moment to release its memory
    while time.time() < deadline and any(alive(pid) for pid in pids.values()):
        time.sleep(0.1)
    for r, pid in pids.items():
        assert not alive(pid), f"rank {r} (pid {pid}) is still running"
