"""shoal across an emulated LAN: 4 fake hosts (network namespaces) joined by
links shaped to 1 Gbit with 1 ms each way, Open MPI launching one rank per
host without sshd (tests/lan/lan.sh). Every layout must produce what one rank
produces, token for token, and the interface counters must show the traffic
crossed the links. Skips, saying why, where the LAN cannot be emulated.
"""
import os
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import shoal_harness as h  # noqa: E402
from test_lan_infra import counters, lan, up, usable  # noqa: E402,F401


@pytest.fixture(scope="module")
def lan4(usable):  # noqa: F811
    lan_id, state = up(4, "--rate", "1gbit", "--delay-ms", "1", "--id", f"ps{os.getpid()}",
                       "--owner", os.getpid())
    yield lan_id
    lan("down", lan_id, check=False)


@pytest.fixture(scope="module")
def model():
    return h.testdata("stories260K.gguf")


@pytest.mark.parametrize("tp,pp", [(2, 2), (4, 1), (1, 4)])
def test_layouts_across_hosts(lan4, model, tp, pp, tmp_path):
    # one thread per rank: the four "hosts" share this machine's cores
    args = ["run", "-m", str(model), "-p", "Once upon a time", "-n", 24, "--temp", 0, "-v", "-t", 1]
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
    # and the run paid the link latency: each token needs at least one 2 ms round trip
    assert took > 24 * 0.002, "too fast for 1 ms links: did the traffic bypass them?"
