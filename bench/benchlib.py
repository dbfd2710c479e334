"""What the benchmark scripts in bench/ share: tools, ports, the processes under test, the load
generators and their parsers.

Every process is started on 127.0.0.1 with a port picked free a moment before, pinned to a CPU
with taskset, and stopped by the script that started it. The proxy under test gets CPU 0; the
upstream and the load generator share CPU 1, so that on a two-core machine the proxy is what
saturates.
"""
import collections
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROXY_CPU = "0"
LOAD_CPU = "1"
BODIES = {"1k": "x" * 1024, "60": "y" * 60}


def ensure(packages):
    """Installs the Debian packages of `packages` ({command: package}) whose command is missing."""
    missing = sorted({pkg for cmd, pkg in packages.items() if not shutil.which(cmd)})
    if not missing:
        return
    print(f"==> installing {' '.join(missing)}", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq"] + missing, check=True, env=env)


def release_binary(name, package):
    """The release binary `name` of `package`, built if stale, in CARGO_TARGET_DIR if set."""
    subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", package, "--bin", name],
                   cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    return os.path.join(target, "release", name)


def build_rampart():
    """The release rampart binary, built if stale."""
    return release_binary("rampart", "rampart")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def cpu_seconds(pid):
    """The CPU time process `pid` has used so far, user and system, in seconds. Unlike
    throughput, it does not count the time a virtual machine's host takes the CPU away."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5); `fields` starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid):
    """The peak resident set of process `pid` so far (VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Process:
    """A child process, stopped (and waited for) by `stop`."""

    def __init__(self, name, args, cpu, port=None, stop_signal=signal.SIGTERM, timeout=10.0,
                 **popen):
        self.name = name
        self.stop_signal = stop_signal
        self.proc = subprocess.Popen(["taskset", "-c", cpu] + args, **popen)
        if port is not None:
            wait_port(port, name, timeout)

    @property
    def pid(self):
        return self.proc.pid

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def nginx_conf(tmp, name, workers, server_block, upstream_block=""):
    path = os.path.join(tmp, f"{name}.conf")
    temp = os.path.join(tmp, name)
    os.makedirs(temp, exist_ok=True)
    with open(path, "w") as f:
        f.write(f"""
worker_processes {workers};
master_process off;
daemon off;
pid {temp}/nginx.pid;
error_log {temp}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    {upstream_block}
    {server_block}
}}
""")
    return path, temp


def start_upstream(tmp, name):
    """An nginx serving `/1k` (1 KiB) and `/60` (60 bytes): one process, one worker."""
    port = free_port()
    locations = "\n".join(
        f'location = /{path} {{ default_type text/plain; return 200 "{body}"; }}'
        for path, body in BODIES.items()
    )
    server = f"server {{ listen 127.0.0.1:{port}; {locations} }}"
    conf, temp = nginx_conf(tmp, name, 1, server)
    proc = Process(name, ["nginx", "-p", temp, "-c", conf], LOAD_CPU, port,
                   stop_signal=signal.SIGQUIT)
    return proc, port


Load = collections.namedtuple("Load", "rps errors requests")


def wrk(port, path, seconds, connections):
    """Max req/s over HTTP/1.1 keep-alive: a `Load` (req/s, errors, requests completed)."""
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
         f"http://127.0.0.1:{port}{path}"],
        check=True, capture_output=True, text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return Load(rps, errors, requests)


def h2load_max(port, path, seconds, clients, streams):
    """Max req/s over h2c (prior knowledge): (req/s, errors)."""
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "h2load", f"-c{clients}", f"-m{streams}", f"-D{seconds}",
         "--warm-up-time=1", f"http://127.0.0.1:{port}{path}"],
        check=True, capture_output=True, text=True,
    ).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    done = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    errors = int(status.group(4)) + int(status.group(3)) + int(done.group(5))
    return rps, errors


def h2load_rate(port, path, seconds, rate, clients, h1=True):
    """A fixed rate (open loop: each client sends on its own schedule, whatever the answers) for
    `seconds` after a second of warm-up: every request after the warm-up as (start in µs, status,
    latency in µs), from h2load's per-request log.

    Each client sends `rate / clients` requests a second on a timer that starts when it connects.
    Connected all at once, the clients' timers would fire together: 50 clients at 2,000 req/s
    send bursts of 50 requests every 25 ms, and the latency measured is mostly the wait behind a
    burst. So the clients connect one per millisecond (`-r 1 --rate-period 1ms`), which spreads
    their sends over the period; h2load then takes a request count (`-n`) instead of `-D`."""
    with tempfile.NamedTemporaryFile(prefix="h2load-", suffix=".log") as log:
        args = ["taskset", "-c", LOAD_CPU, "h2load", f"-c{clients}", "-m1",
                f"--rps={max(1, rate // clients)}", "-r1", "--rate-period=1ms",
                f"-n{rate * (seconds + 1)}", f"--log-file={log.name}"]
        if h1:
            args.append("--h1")
        subprocess.run(args + [f"http://127.0.0.1:{port}{path}"], check=True,
                       capture_output=True, text=True)
        rows = []
        with open(log.name) as f:
            for line in f:
                start, status, micros = line.split()[:3]
                rows.append((float(start), int(status), int(micros)))
        if not rows:
            return rows
        warm_until = min(start for start, _, _ in rows) + 1e6
        return [row for row in rows if row[0] >= warm_until]


def percentile(values, p):
    """The `p`-th percentile (0..100) of `values`, nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def median(values):
    return statistics.median(values) if values else float("nan")
