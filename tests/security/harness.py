"""Shared by tests/security and tests/faults: runs a real kilnd (`kiln up`)
on a temp data dir and a loopback port, with host objects of its own (a
runtime tag and subnet per kilnd), and checks that nothing of a tag is left
on the host afterwards.

Environment: KILN_BIN (the `kiln` binary; default target/{debug,release}/kiln),
KILN_TEMPLATE_DIR (the base template cache; default /var/lib/kiln when it has
one)."""

import glob
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from kilnd_process import START_TIMEOUT, free_port, log_tail, spawn_kilnd, subnets  # noqa: E402
from kilnd_process import free_subnet as _free_subnet  # noqa: E402


def template_dir() -> str:
    if os.environ.get("KILN_TEMPLATE_DIR"):
        return os.environ["KILN_TEMPLATE_DIR"]
    if pathlib.Path("/var/lib/kiln/templates").is_dir():
        return "/var/lib/kiln"
    return str(ROOT / "target" / "kiln-test-templates")


@dataclass
class Kilnd:
    url: str
    key: str
    port: int
    tag: str
    data: pathlib.Path
    env: dict
    proc: subprocess.Popen = None
    log: pathlib.Path = field(init=False)
    # Descriptors kilnd inherits without close-on-exec (see start).
    pass_fds: tuple = ()

    def __post_init__(self):
        self.log = self.data / "kilnd.log"

    @property
    def headers(self):
        return {"X-API-KEY": self.key}

    def sdk_opts(self):
        return dict(api_key=self.key, api_url=self.url, sandbox_url=self.url)

    def start(self, timeout=START_TIMEOUT):
        env = dict(os.environ)
        env.update(
            KILN_API_KEY=self.key,
            KILN_RUNTIME=RUNTIME,
            KILN_LOG=env.get("KILN_LOG", "info"),
            KILN_TEMPLATE_DIR=template_dir(),
            KILN_RUNTIME_TAG=self.tag,
        )
        env.update(self.env)
        self.proc = spawn_kilnd(self.data, self.port, env, timeout, pass_fds=self.pass_fds)

    def log_tail(self, n=4000):
        return log_tail(self.log, n)

    def list_ids(self):
        r = httpx.get(f"{self.url}/v2/sandboxes", params={"state": "running,paused", "limit": 1000},
                      headers=self.headers, timeout=30)
        r.raise_for_status()
        return {s["sandboxID"] for s in r.json()}

    def kill_all(self):
        for _ in range(10):
            ids = self.list_ids()
            if not ids:
                return
            for i in ids:
                httpx.delete(f"{self.url}/sandboxes/{i}", headers=self.headers, timeout=60)

    def stop(self):
        """Ctrl-C; kilnd must exit 0 within 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("kilnd did not stop within 20 s of SIGINT")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


# The runtime the suites' kilnds serve by default: container, or gvisor
# (70-security.sh runs tests/security and tests/faults on each the host has).
RUNTIME = os.environ.get("KILN_SECURITY_RUNTIME", "container")


def gvisor_tag(tag: str) -> str:
    """The tag of a kilnd's gVisor host objects: its runtime tag with a `g`
    (Config::gvisor_tag)."""
    return tag[:3] + "g"


def free_subnet(preferred: str, avoid=()) -> str:
    """preferred (a 10.x.0.0 /16) if no interface routes it yet, else the
    first free one of 10.220-254 (the e2b-sdk tests use 10.150-189, the
    runtime's tests 10.201-210)."""
    return _free_subnet([preferred] + subnets(220, 254), avoid=avoid)


def new_kilnd(data: pathlib.Path, tag: str, subnet: str, **env) -> Kilnd:
    """A kilnd serving `env`'s KILN_RUNTIME, else RUNTIME; on gVisor its
    bridge gets a free /16 of its own, fixed across restarts."""
    port = free_port()
    env.setdefault("KILN_SUBNET", free_subnet(subnet))
    if env.get("KILN_RUNTIME", RUNTIME) == "gvisor" and "KILN_GVISOR_SUBNET" not in env:
        o = env["KILN_SUBNET"].split(".")
        after = f"10.{(int(o[1]) + 1) % 256}.0.0"
        env["KILN_GVISOR_SUBNET"] = free_subnet(after, avoid=(env["KILN_SUBNET"],))
    return Kilnd(f"http://127.0.0.1:{port}", "e2b_" + secrets.token_hex(20), port, tag, data, env)


def tag_processes(tag: str):
    """Host pids whose cgroup is one of the tag's (sandboxes, helpers)."""
    needle = f"/kiln/{tag}/"
    pids = []
    for p in glob.glob("/proc/[0-9]*"):
        try:
            if needle in pathlib.Path(p, "cgroup").read_text():
                pids.append(int(p.split("/")[-1]))
        except OSError:
            pass
    return pids


def tag_agents(tag: str, cgroup: str | None = None):
    """Host pids of the tag's kiln-agent processes (in one cgroup if given).
    Warm-pool helpers come and go while this runs, so a process that is gone
    by the time it is read is skipped, not an error."""
    out = []
    for pid in tag_processes(tag):
        try:
            if open(f"/proc/{pid}/comm").read().strip() != "kiln-agent":
                continue
            if cgroup is not None and cgroup_of(pid) != cgroup:
                continue
        except OSError:
            continue
        out.append(pid)
    return out


def tag_sentries(tag: str, sandbox_id: str | None = None):
    """Host pids of a kilnd's gVisor sandboxes' kernels (runsc-sandbox, the
    sentry: the process whose death ends a gVisor sandbox), of one sandbox
    if given (its cgroup is kiln/<gVisor tag>/<sandbox id>)."""
    out = []
    for pid in tag_processes(gvisor_tag(tag)):
        try:
            if not pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"runsc-sandbox\0"):
                continue
            if sandbox_id is not None and not cgroup_of(pid).endswith(f"/{sandbox_id}"):
                continue
        except OSError:
            continue
        out.append(pid)
    return out


def sandbox_inits(tag: str):
    """Host pids of every sandbox of a kilnd, one each: the agent (the
    container runtime's init) or the sentry (gVisor's)."""
    return tag_agents(tag) + tag_sentries(tag)


def cgroup_pids(tag: str, cgroup: str):
    """Host pids of the tag's kilnd (either runtime) in one cgroup."""
    out = []
    for t in (tag, gvisor_tag(tag)):
        for pid in tag_processes(t):
            try:
                if cgroup_of(pid) == cgroup:
                    out.append(pid)
            except OSError:
                pass
    return out


def tag_cgroups(tag: str):
    """Sandbox cgroups of the tag (v1 hierarchies or v2)."""
    dirs = glob.glob(f"/sys/fs/cgroup/*/kiln/{tag}/*/") + glob.glob(f"/sys/fs/cgroup/kiln/{tag}/*/")
    return [d for d in dirs if os.path.isdir(d)]


def host_leaks(tag: str, data: pathlib.Path):
    """Everything of a stopped kilnd's tag still on the host: processes,
    sandbox cgroups, veths and network namespaces (of the container
    runtime's tag and the gVisor runtime's), mounts (below the data dir and
    the gVisor runtime's run dir) and loop devices of its data dir."""
    left = []
    for t in (tag, gvisor_tag(tag)):
        pids = tag_processes(t)
        if pids:
            left.append(f"processes of {t} {pids[:10]}")
        cgs = tag_cgroups(t)
        if cgs:
            left.append(f"cgroups {cgs[:5]}")
        veths = [os.path.basename(d) for d in glob.glob(f"/sys/class/net/kv{t}-*")]
        if veths:
            left.append(f"veths {veths[:5]}")
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        ns = [l.split()[0] for l in netns.splitlines() if l.startswith(f"kiln-{t}-")]
        if ns:
            left.append(f"network namespaces {ns[:5]}")
    d = str(data)
    # Mounts below the data dir (the data dir itself may be a test's tmpfs)
    # and the gVisor runtime's.
    grun = f"/run/kiln-gvisor/{gvisor_tag(tag)}/"
    mounts = [m for m in (l.split()[4] for l in open("/proc/self/mountinfo"))
              if m.startswith(d + "/") or m.startswith(grun)]
    if mounts:
        left.append(f"mounts {mounts[:5]}")
    loops = [l for l in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout.splitlines() if d in l]
    if loops:
        left.append(f"loop devices {loops[:5]}")
    return left


def wait_host_clean(tag: str, data: pathlib.Path, timeout=20):
    """Polls host_leaks until empty; returns what is left at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = host_leaks(tag, data)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def sandbox_pids(sandbox_id_marker: str):
    """Host pids of processes whose command line contains a marker."""
    out = []
    for p in glob.glob("/proc/[0-9]*"):
        try:
            if sandbox_id_marker.encode() in pathlib.Path(p, "cmdline").read_bytes():
                out.append(int(p.split("/")[-1]))
        except OSError:
            pass
    return out


def cgroup_of(pid: int) -> str:
    """The pid's memory (v1) or unified (v2) cgroup path."""
    for line in pathlib.Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if ctrls == "" or "memory" in ctrls.split(","):
            return path
    return ""


def percentile(values, p):
    v = sorted(values)
    k = max(1, min(len(v), -(-len(v) * p // 100)))
    return v[int(k) - 1]


def run_py(sbx, code: str, user="root", timeout=60):
    """Runs a Python script inside the sandbox; returns (exit code, stdout, stderr)."""
    path = f"/tmp/check-{secrets.token_hex(4)}.py"
    sbx.files.write(path, code, user="root")
    from e2b import CommandExitException

    try:
        r = sbx.commands.run(f"python3 {path}", user=user, timeout=timeout)
        return r.exit_code, r.stdout, r.stderr
    except CommandExitException as e:
        return e.exit_code, e.stdout, e.stderr


def sh(sbx, cmd: str, user="root", timeout=60):
    """Runs a shell command inside the sandbox; returns (exit code, stdout, stderr)."""
    from e2b import CommandExitException

    try:
        r = sbx.commands.run(cmd, user=user, timeout=timeout)
        return r.exit_code, r.stdout, r.stderr
    except CommandExitException as e:
        return e.exit_code, e.stdout, e.stderr

