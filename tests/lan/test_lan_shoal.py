"""shoal across an emulated LAN: 4 fake hosts (network namespaces) joined by
links shaped to 1 Gbit with 1 ms each way, Open MPI launching one rank per
host without sshd (tests/lan/lan.sh). Every layout must produce what one rank
produces, token for token, and the interface counters must show the traffic
crossed the links, and the generation must have paid the links' delay: at
least one 1 ms hop per all-reduce and per pipeline stage on every decode
step, timed by shoal itself (not mpirun's start-up, which alone takes longer
than any such bound). Skips, saying why, where the LAN cannot be emulated (in
CI mode, SHOAL_CI_STRICT=1, fails saying why).
"""
import os
import re
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import shoal_harness as h  # noqa: E402
from test_lan_infra import counters, lan, up, usable  # noqa: E402,F401


DELAY_MS = 1.0   # one way, on every link
N_LAYER = 5      # stories260K (../shared/testdata/README.md)
N_GEN = 24


@pytest.fixture(scope="module")
def lan4(usable):  # noqa: F811
    lan_id, state = up(4, "--rate", "1gbit", "--delay-ms", DELAY_MS, "--id", f"ps{os.getpid()}",
                       "--owner", os.getpid())
    yield lan_id
    lan("down", lan_id, check=False)


@pytest.fixture(scope="module")
def model():
    return h.testdata("stories260K.gguf")


@pytest.mark.parametrize("tp,pp", [(2, 2), (4, 1), (1, 4)])
def test_layouts_across_hosts(lan4, model, tp, pp, tmp_path):
    # one thread per rank: the four "hosts" share this machine's cores
    args = ["run", "-m", str(model), "-p", "Once upon a time", "-n", N_GEN, "--temp", 0, "-v", "-t", 1]
    ids_one, ids_lan = tmp_path / "one.txt", tmp_path / "lan.txt"
    h.run(args + ["--ids-out", ids_one])
    before = counters(lan4)
    t0 = time.monotonic()
    r = lan("run", lan4, "-np", 4, h.shoal_bin(), *args, "--tp", tp, "--pp", pp, "--ids-out",
            ids_lan, timeout=180, check=False)
    took = time.monotonic() - t0
    after = counters(lan4)
    print(r.stderr[-1500:])
    print(f"tp {tp} x pp {pp} across 4 hosts: {took:.1f} s")
    assert r.returncode == 0, f"mpirun failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    assert h.read_ids(ids_lan) == h.read_ids(ids_one), f"tp {tp} x pp {pp}: differs from one rank"
    # every host sent shoal's traffic over its link: at least the steps'
    # messages, several kilobytes per host for 28 positions
    for host in after:
        sent = after[host][1] - before[host][1]
        assert sent > 8 * 1024, f"{host} sent only {sent} bytes over its link"
    # and the generation paid the links' delay. Rank 0's own timing of its decode steps (mpirun's
    # start-up, in `took`, is longer than any bound here with no delay at all). One rank per
    # host, so within a step every all-reduce of a tensor-parallel group waits for at least
    # one hop (2 a layer, one after another: each needs the sum before), and with pp stages the
    # activations go round the pp hosts, the sampled token back to the first: pp more hops.
    m = re.search(r"generation (\d+) tokens, (\d+) decode steps in ([\d.]+) s", r.stderr)
    assert m, f"no generation summary from rank 0:\n{r.stderr[-1500:]}"
    n_gen, steps, t_decode = int(m.group(1)), int(m.group(2)), float(m.group(3))
    assert n_gen == N_GEN and steps >= N_GEN - 1, f"generated {n_gen} tokens in {steps} steps, not {N_GEN}"
    hops = (2 * N_LAYER if tp > 1 else 0) + (pp if pp > 1 else 0)
    least = steps * hops * DELAY_MS / 1000
    print(f"decode: {steps} steps in {t_decode:.3f} s ({t_decode / steps * 1000:.2f} ms a step; "
          f"at least {hops} hops of {DELAY_MS} ms a step: {least:.3f} s)")
    # delayq holds every packet for the delay at least; 5% for its timer's granularity
    assert t_decode >= 0.95 * least, \
        f"{steps} decode steps in {t_decode:.3f} s, under {hops} hops x {DELAY_MS} ms each: did the " \
        "traffic bypass the delayed links?"
