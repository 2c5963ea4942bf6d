"""Hostile workloads in sandboxes of a real kilnd — fork bomb, memory bomb,
disk filler, CPU spinners on every core, file-descriptor exhaustion, all at
once — while a healthy sandbox keeps its exec round trip (p99 within 3x of
its unloaded figure, on a host with cores to spare beyond the bombs'
quotas) and kilnd keeps answering. Each workload must hit its
sandbox's limit (pids, memory, disk, CPU quota, RLIMIT_NOFILE), not the
host's; killing the sandboxes ends them all."""

import json
import os
import struct
import time
import warnings

import httpx

from harness import RUNTIME, cgroup_of, gvisor_tag, percentile, sandbox_pids, sh

HOSTILE = {
    # name: (command, run as)
    "fork": ("bash -c ':(){ :|:& };:' >/dev/null 2>&1", "root"),
    "memory": ("python3 -c 'x=[]\nwhile True: x.append(bytearray(8<<20))' >/dev/null 2>&1", "root"),
    "disk": ("dd if=/dev/zero of=/home/user/fill bs=1M >/dev/null 2>&1; sleep 600", "root"),
    "cpu": ("for i in $(seq 8); do (while :; do :; done) & done; wait", "root"),
    "fds": (
        "for i in 1 2 3 4; do python3 -c '\n"
        "import os, resource, time\n"
        "s, h = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (h, h))\n"
        "fds = []\n"
        "try:\n"
        "    while True: fds.append(os.open(\"/dev/null\", os.O_RDONLY))\n"
        "except OSError: pass\n"
        "print(len(fds), flush=True)\n"
        "time.sleep(600)' & done; wait",
        "root",
    ),
}


# vCPUs the bombs keep busy for as long as they run (cpu, fork).
BUSY_VCPUS = 2
# The healthy sandbox's exec p99 under load above which it counts as
# starved, per runtime (unloaded: about 2 ms on the container runtime,
# 10-45 ms on gVisor).
STARVED_MS = {"container": 100, "gvisor": 1500}


class Agent:
    """process.Process/Start of /bin/true through kilnd's proxy (what the
    SDKs send, without the SDK's own overhead)."""

    def __init__(self, kilnd, sandbox_id):
        token = httpx.get(f"{kilnd.url}/sandboxes/{sandbox_id}", headers=kilnd.headers).json()["envdAccessToken"]
        self.url = f"{kilnd.url}/process.Process/Start"
        self.headers = {
            "E2b-Sandbox-Id": sandbox_id,
            "E2b-Sandbox-Port": "49983",
            "X-Access-Token": token,
            "Content-Type": "application/connect+json",
        }
        self.http = httpx.Client(timeout=30)
        msg = json.dumps({"process": {"cmd": "/bin/true"}}).encode()
        self.body = struct.pack(">BI", 0, len(msg)) + msg

    def exec_ms(self, n):
        out = []
        for _ in range(n):
            t = time.perf_counter()
            r = self.http.post(self.url, headers=self.headers, content=self.body)
            out.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200 and b'"end"' in r.content, r.content[:300]
        return out


# A pure cgroup v2 host (one hierarchy) or v1 (a hierarchy per controller).
V2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")


def cgroup_file(controller, rel, name):
    path = f"/sys/fs/cgroup{rel}/{name}" if V2 else f"/sys/fs/cgroup/{controller}{rel}/{name}"
    with open(path) as f:
        return f.read().strip()


def keyed(text, key):
    """The value of `key` in a flat-keyed cgroup file ("key value" lines)."""
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return int(v)
    raise AssertionError(f"no {key} in {text!r}")


def pids_state(rel):
    """(pids.max, pids.current, times pids.max refused a fork)."""
    return (
        int(cgroup_file("pids", rel, "pids.max")),
        int(cgroup_file("pids", rel, "pids.current")),
        keyed(cgroup_file("pids", rel, "pids.events"), "max"),
    )


def memory_state(rel):
    """(limit, peak usage, OOM kills)."""
    if V2:
        return (
            int(cgroup_file("memory", rel, "memory.max")),
            int(cgroup_file("memory", rel, "memory.peak")),
            keyed(cgroup_file("memory", rel, "memory.events"), "oom_kill"),
        )
    return (
        int(cgroup_file("memory", rel, "memory.limit_in_bytes")),
        int(cgroup_file("memory", rel, "memory.max_usage_in_bytes")),
        keyed(cgroup_file("memory", rel, "memory.oom_control"), "oom_kill"),
    )


def has_procs(rel):
    dirs = [f"/sys/fs/cgroup{rel}"] if V2 else [f"/sys/fs/cgroup/{c}{rel}" for c in ("pids", "memory", "cpu")]
    return any(os.path.exists(f"{d}/cgroup.procs") and open(f"{d}/cgroup.procs").read().strip() for d in dirs)


def sandbox_cgroup(kilnd, sbx, marker):
    """The sandbox's cgroup path (as in /proc/<pid>/cgroup), found through a
    marker process started in it; on gVisor, where the sandbox's processes
    are its kernel's and not the host's, the cgroup runsc puts its kernel
    in (kiln/<gVisor tag>/<id>)."""
    sbx.commands.run(f"sh -c 'sleep 900' {marker}", background=True, user="root")
    if RUNTIME == "gvisor":
        return f"/kiln/{gvisor_tag(kilnd.tag)}/{sbx.sandbox_id}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = sandbox_pids(marker)
        if pids:
            return cgroup_of(pids[0])
        time.sleep(0.1)
    raise AssertionError("marker process not found on the host")


def cpu_usage_s(rel):
    if V2:
        return keyed(cgroup_file("cpu", rel, "cpu.stat"), "usage_usec") / 1e6
    return int(cgroup_file("cpuacct", rel, "cpuacct.usage")) / 1e9


def allocated(path):
    """Bytes allocated on disk under path (sparse files count what they use)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def file_nr():
    allocated, _, maximum = open("/proc/sys/fs/file-nr").read().split()
    return int(allocated), int(maximum)


def mem_available_mib():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def check_gvisor_fork_and_memory(hostile, bombs, cgroups):
    """gVisor's form of the fork and memory checks. Its kernel keeps no
    task or memory limit of its own, and the sentry dies (with the whole
    sandbox) when the host's limit is hit, so the agent keeps them inside:
    RLIMIT_NPROC for each uid, and it kills the largest process when the
    sandbox goes over its memory. The host's limits, above those, are never
    reached."""
    # The fork bomb ran (an idle sandbox's sentry has about 40 host tasks;
    # each process inside costs 7-16), held inside: the sentry never met
    # the host's limit, which would have ended the sandbox. (Nothing can be
    # started in it meanwhile: the agent forks as root, whose processes
    # the bomb holds, as pids.max stops it on the container runtime.)
    pids_max, pids_now, refused = pids_state(cgroups["fork"])
    assert pids_now <= pids_max
    assert pids_now > 200, f"the fork bomb's sandbox has {pids_now} host tasks: it did not run"
    assert refused == 0, f"the sentry hit the host's pids.max {refused} times (the limit inside did not hold)"

    # The memory bomb was killed by the agent, and the host's OOM killer
    # never ran.
    from e2b import CommandExitException

    try:
        result = bombs["memory"].wait()
        ended = (result.exit_code, result.error)
    except CommandExitException as e:
        ended = (e.exit_code, e.error)
    # SIGKILL: of python under the shell (137), or of the command itself
    # (the shell exec'd python: -1, status "signal: killed", no error; an
    # exit status the agent lost would say so in the error).
    assert ended == (137, None) or ended == (-1, None), (
        f"the memory bomb was not killed: it ended {ended}"
    )
    mem_limit, mem_peak, oom_kills = memory_state(cgroups["memory"])
    assert mem_limit <= 512 << 20, f"the sentry's host memory limit is {mem_limit >> 20} MiB"
    assert mem_peak <= mem_limit
    assert oom_kills == 0, "the host's OOM killer ran in the memory bomb's sandbox"
    code, out, _ = sh(hostile["memory"], "echo alive")
    assert out == "alive\n"


def test_hostile_workloads_stay_in_their_sandboxes(kilnd, new_sandbox, marker):
    healthy = new_sandbox()
    agent = Agent(kilnd, healthy.sandbox_id)
    agent.exec_ms(10)
    unloaded = agent.exec_ms(100)
    base_p99 = percentile(unloaded, 99)

    hostile = {name: new_sandbox() for name in HOSTILE}
    cgroups = {name: sandbox_cgroup(kilnd, s, f"{marker}-{name}") for name, s in hostile.items()}
    disk_used0 = allocated(kilnd.data)
    mem0 = mem_available_mib()
    files0, file_max = file_nr()
    bombs = {}
    for name, s in hostile.items():
        cmd, user = HOSTILE[name]
        bombs[name] = s.commands.run(cmd, background=True, user=user, timeout=0)
    time.sleep(4)  # the bombs reach their limits

    cpu0 = cpu_usage_s(cgroups["cpu"])
    t0 = time.monotonic()
    loaded = []
    health_ms = []
    # One connection, so that what is timed is kilnd's answer, not the
    # client's set-up (httpx's TLS context takes tens of ms of CPU).
    health = httpx.Client(timeout=5)
    for _ in range(10):
        loaded += agent.exec_ms(10)
        t = time.perf_counter()
        assert health.get(f"{kilnd.url}/health").status_code == 200
        health_ms.append((time.perf_counter() - t) * 1000)
    listed = httpx.get(f"{kilnd.url}/v2/sandboxes", headers=kilnd.headers, timeout=5)
    assert listed.status_code == 200
    running = {s["sandboxID"] for s in listed.json()}
    assert healthy.sandbox_id in running
    # No bomb takes its own sandbox down: the agent's children are the OOM
    # killer's first choice and a fork bomb meets pids.max first (on gVisor,
    # whose kernel has neither, the agent keeps both limits inside).
    died = {n for n, s in hostile.items() if s.sandbox_id not in running}
    assert not died, f"sandboxes died under their own bomb: {sorted(died)}"
    cpu_rate = (cpu_usage_s(cgroups["cpu"]) - cpu0) / (time.monotonic() - t0)

    loaded_p99 = percentile(loaded, 99)
    print(f"exec p99 unloaded {base_p99:.1f} ms, loaded {loaded_p99:.1f} ms "
          f"({loaded_p99 / base_p99:.1f}x); /health max {max(health_ms):.1f} ms")
    # The spinners and the fork bomb each use their whole 1-vCPU quota: the
    # latency bound holds where the host has cores beyond those quotas. On a
    # smaller host every process waits for a CPU, the host's own as much as
    # a sandbox's (on 2 cores a host-side spawn of /bin/true slows 4-5x
    # under these bombs), and the bound is reported, not asserted.
    cores = os.cpu_count() or 1
    if cores >= BUSY_VCPUS + 2:
        assert loaded_p99 <= 3 * base_p99, (
            f"healthy sandbox's exec p99 {loaded_p99:.1f} ms under load > 3x unloaded {base_p99:.1f} ms"
        )
    else:
        # A warning, so that the summary of a quiet run shows it.
        warnings.warn(
            f"NOT CHECKED on this host: exec p99 within 3x under load needs {BUSY_VCPUS + 2} cores "
            f"(the bombs' quotas take {BUSY_VCPUS}), this host has {cores}; measured "
            f"{base_p99:.1f} -> {loaded_p99:.1f} ms ({loaded_p99 / base_p99:.1f}x)"
        )
    # Whatever the host's size, the healthy sandbox is not starved. An exec
    # through gVisor (runsc's ptrace platform) is dozens of context switches
    # between the sentry and its stub processes, each waiting for a CPU
    # while the bombs keep a small host busy: its bound is wider.
    starved_ms = STARVED_MS[RUNTIME]
    assert loaded_p99 < starved_ms, f"healthy sandbox's exec p99 {loaded_p99:.1f} ms under load"
    assert max(health_ms) < 1000, f"kilnd's /health took {max(health_ms):.0f} ms under load"

    # Each workload hit its sandbox's limit, not the host's.
    if RUNTIME == "gvisor":
        check_gvisor_fork_and_memory(hostile, bombs, cgroups)
    else:
        pids_max, pids_now, refused = pids_state(cgroups["fork"])
        assert 0 < pids_max <= 65536
        assert pids_now <= pids_max
        assert refused > 0, "the fork bomb never hit pids.max"

        mem_limit, mem_peak, oom_kills = memory_state(cgroups["memory"])
        assert mem_limit <= 256 << 20
        assert mem_peak <= mem_limit
        assert oom_kills > 0, "the memory bomb was never OOM-killed"
    assert mem0 - mem_available_mib() < 2048, "the host lost more than 2 GiB to the bombs"

    code, out, _ = sh(hostile["disk"], "df -m --output=avail,size / | tail -1", timeout=30)
    avail, size = map(int, out.split())
    assert size <= 600 and avail < 16, f"the disk filler did not fill its own {size} MiB disk (avail {avail} MiB)"
    grown = allocated(kilnd.data) - disk_used0
    assert grown < 700 << 20, f"the data dir grew by {grown >> 20} MiB for a 512 MiB sandbox disk"

    assert cpu_rate < 1.3, f"8 spinners in a 1-vCPU sandbox used {cpu_rate:.2f} cores"

    files1, _ = file_nr()
    assert files1 - files0 < file_max // 10
    code, out, _ = sh(hostile["fds"], "ls /proc/*/fd 2>/dev/null | wc -l", timeout=30)
    assert int(out) < 4 * 20000 + 1000

    print(f"checks done at {time.monotonic() - t0:.1f} s")
    # Killing them ends everything they started.
    for name, s in hostile.items():
        t = time.monotonic()
        s.kill()
        assert time.monotonic() - t < 15, f"killing the {name} sandbox took too long"
    deadline = time.monotonic() + 15
    while any(sandbox_pids(f"{marker}-{n}") for n in HOSTILE) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(sandbox_pids(f"{marker}-{n}") for n in HOSTILE)
    for rel in cgroups.values():
        assert not has_procs(rel), f"processes left in {rel}"
    assert healthy.commands.run("echo alive").stdout == "alive\n"
