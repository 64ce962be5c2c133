"""What every benchmark measures with: CPU and memory of processes (Linux /proc), percentiles, the
machine's description, a progress log, the open-file limit raised for thousands of sockets."""
import contextlib
import os
import platform
import resource
import sys
import time



def log(message):
    """A timestamped progress line on stderr (the figures go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def raise_nofile():
    """Open-file soft limit up to the hard limit (inherited by every child we start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine():
    """The machine a figure was measured on: cores, CPU model, Python, load, open-file limit."""
    model = "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": model, "python": platform.python_version(),
            "loadavg": os.getloadavg(), "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}


def rss_kb(pid):
    """Resident memory of a process (VmRSS, KB)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def own_cpu():
    """user + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def trend(parts):
    """p50 (ms) of the first and of the last tenth of the deliveries, in arrival order per client:
    a backlog that grows during the run shows as last >> first."""
    first, last = [], []
    for part in parts:
        tenth = max(1, len(part) // 10)
        first.extend(part[:tenth])
        last.extend(part[-tenth:])
    if not first:
        return None, None
    return percentile(first, 0.5) * 1000, percentile(last, 0.5) * 1000


def percentile(values, p):
    """The value below which a share `p` of `values` falls (None for none)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]
