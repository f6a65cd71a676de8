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
    model = h.synth_slow(tmp_path / "slow.gguf")
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


def _in_flight(port, out, key):
    """Two requests into a server that is busy for seconds (a prompt of ~3000 tokens), one answered
    whole and one streamed: out[key + kind] = (seconds, status, body) once each ends."""
    import http.client
    import json
    import threading

    body = {"model": "slow", "prompt": "a b c " * 1000, "max_tokens": 64, "temperature": 0}

    def one(stream):
        t0 = time.time()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=90)
        try:
            c.request("POST", "/v1/completions", json.dumps(dict(body, stream=stream)),
                      {"Content-Type": "application/json"})
            r = c.getresponse()
            text = r.read().decode(errors="replace")  # to its end: the time is when the answer ended
            out[key + ("stream" if stream else "whole")] = (time.time(), r.status, text)
        except Exception as e:  # noqa: BLE001 - a connection cut without an answer is what must not happen
            out[key + ("stream" if stream else "whole")] = (time.time(), None, repr(e))

    ts = [threading.Thread(target=one, args=(s,)) for s in (False, True)]
    for t in ts:
        t.start()
    return ts


def _assert_errors(out, t_fault, why, limit):
    import json
    whole_t, whole_st, whole = out["whole"]
    assert whole_st == 500 and why in json.loads(whole)["error"]["message"], (whole_st, whole)
    stream_t, stream_st, stream = out["stream"]
    assert stream_st == 200 and '"error"' in stream and why in stream, (stream_st, stream[-600:])
    print(f"answers {whole_t - t_fault:.2f} s (whole) and {stream_t - t_fault:.2f} s (stream) after the fault")
    for t in (whole_t, stream_t):
        assert t - t_fault < limit, f"an answer came {t - t_fault:.1f} s after the fault"


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    return h.synth_slow(tmp_path_factory.mktemp("slow") / "slow.gguf")


@pytest.mark.parametrize("fault", ["killed", "stopped"])
def test_serve_follower_fault_answers_in_flight(fault, slow_model):
    """shoal serve, tp 2, two requests in flight when rank 1 dies (SIGKILL: mpirun then ends the job,
    its SIGKILL to rank 0 two seconds away) or hangs (SIGSTOP: nothing tells rank 0; --comm-timeout 3
    does): both requests get an error that says why (a 500, an error event in the stream), not a
    closed connection, and the server exits non-zero. Before, the requests' connections were cut
    without an answer (killed) or the server waited for ever (stopped)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))
    from serve_harness import Server
    s = Server(["-m", slow_model, "-t", 1, "--tp", 2, "-c", 4096, "--comm-timeout", 3], np_=2)
    try:
        out = {}
        ts = _in_flight(s.port, out, "")
        time.sleep(1.5)
        pids = rank_pids(s.p.pid)
        assert len(pids) == 2 and not out, f"ranks {pids}, answers before the fault: {out}"
        t_fault = time.time()
        os.kill(pids[1], signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
        for t in ts:
            t.join(60)
        why = "the job is being stopped" if fault == "killed" else "which stopped answering"
        _assert_errors(out, t_fault, why, 2.5 if fault == "killed" else 8)
        rc = s.p.wait(30)
        assert rc != 0, "the server exited 0"
        assert f"waited" in s.err or "gave up waiting" in s.err, s.err[-3000:]
    finally:
        if s.p.poll() is None:
            s.kill()


def test_idle_rank0_keeps_the_others_waiting():
    """With --comm-timeout 1 every wait is bounded, the followers' wait for the next step too: an idle
    rank 0 (a server with no requests; shoal run -i waiting for a line) tells them it is alive four
    times a second, so 3 s of idleness ends nothing. Without the pings the followers gave up after 1 s."""
    import json
    import urllib.request
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))
    from serve_harness import Server
    model = h.testdata("stories260K.gguf")
    s = Server(["-m", model, "-t", 1, "--tp", 2, "--comm-timeout", 1], np_=2)
    try:
        time.sleep(3)
        req = urllib.request.Request(f"{s.url}/v1/completions", json.dumps(
            {"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}).encode(),
            {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200 and json.loads(r.read())["choices"][0]["text"]
    finally:
        assert s.stop() == 0, s.err[-3000:]
    cmd = [h.mpirun_bin()] + h.MPIRUN_FLAGS + ["-np", "2", h.shoal_bin(), "run", "-m", str(model), "-i", "-n", "8",
                                              "--temp", "0", "--tp", "2", "--comm-timeout", "1", "-q"]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(3)
    out, err = p.communicate(b"Once upon a time\n", timeout=60)
    assert p.returncode == 0 and out.strip(), err.decode(errors="replace")[-3000:]
