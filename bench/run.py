"""Every benchmark, one table: the stream figures (bench/held.py, latency.py, full_path.py,
saturation.py), next to Flask-SSE 1.0.0, the write path (bench/write_path.py) and the inbox
(bench/inbox.py).

    python -m bench.run            # full sizes, ~15 minutes on 2 cores
    python -m bench.run --quick    # smaller sizes, ~2-3 minutes: checks that everything runs
    python -m bench.run --only inbox   # GET /v1/notifications on 10 M notifications (bench/inbox.py)

Prints the table (and writes it to bench/results.md). Each scenario starts its own servers and
stops them at the end, also on Ctrl-C or an error; a scenario that fails becomes an error row
and the others still run. Run it on a quiet machine: anything else on the cores is measured too.
"""
import argparse
import dataclasses
import datetime
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback

from bench import inbox
from bench.full_path import full_path
from bench.held import held
from bench.latency import push_latency
from bench.load import OPEN_CONCURRENCY
from bench.measure import log, machine, raise_nofile
from bench.rig import FULL, QUICK
from bench.saturation import saturation
from devtools.services import REPO_ROOT

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = str(REPO_ROOT)

SCENARIOS = ("held", "latency", "full-path", "saturation", "write-path", "inbox")


def ensure_peer_installed():
    try:
        import flask_sse  # noqa: F401
    except ImportError:
        log("flask-sse is not installed: pip install --require-hashes -r requirements-dev.txt")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--require-hashes", "-r",
                        os.path.join(ROOT, "requirements-dev.txt")], check=True)
    import flask_sse
    if flask_sse.__version__ != "1.0.0":
        raise SystemExit(f"the peer must be Flask-SSE 1.0.0, found {flask_sse.__version__}")


# ------------------------------------------------------------------ formatting


def n(value):
    return f"{value:,.0f}"


def ms(value):
    return "—" if value is None else (f"{value:,.0f}" if value >= 100 else f"{value:.1f}")


def ratio(ours, peer):
    if ours is None or peer is None or not peer:
        return "—"
    return f"{ours / peer:.2f}"


def cpu(*values):
    return " / ".join("—" if v is None else f"{v:.1f}" for v in values)


class Table:
    def __init__(self):
        self.rows = []       # measure, figure, target, met, peer, ratio, load-gen CPU
        self.notes = []

    def add(self, measure, figure, target="—", met="—", peer="—", ratio_="—", load="—"):
        self.rows.append((measure, figure, target, met, peer, ratio_, load))

    def note(self, text):
        self.notes.append(text)

    def render(self, markdown=False):
        head = ("measure", "figure", "target", "met", "peer (Flask-SSE 1.0.0)", "ratio ours/peer",
                "load-gen CPU s (ours / peer)")
        rows = [head] + self.rows
        if markdown:
            lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in self.rows]
            return "\n".join(lines)
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
        out = []
        for index, row in enumerate(rows):
            out.append(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))
            if index == 0:
                out.append("-+-".join("-" * w for w in widths))
        return "\n".join(out)


def met(ok, quick_note=None):
    if quick_note:
        return quick_note
    return "yes" if ok else "NO"


# ------------------------------------------------------------------ scenarios → rows


REPEAT = 1                # --repeat: runs of each scenario; the table shows their medians
HEADLINE = ("exactly_one", "rss_per_stream_kb", "p99_ms", "rate")   # listed per run in a note
WORST = ("lost", "failed", "errors", "streams_cut", "late_pushes", "zero")   # the worst run, never a median


def attempt(table, name, function, *args, **kwargs):
    """Run one scenario REPEAT times; a failed run becomes a note, so the others still run. Returns
    the runs' median (the worst run for losses and errors), or None when every run failed."""
    runs = []
    for _ in range(REPEAT):
        try:
            runs.append(function(*args, **kwargs))
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            log(f"{name} failed: {exc}\n{traceback.format_exc()}")
            table.note(f"**{name} failed**: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    if not runs:
        return None
    heads = [key for key in HEADLINE if isinstance(runs[0], dict) and key in runs[0]]
    if len(runs) > 1 and heads:
        table.note(f"{name}: median of {len(runs)} runs; per run " + "; ".join(
            f"{key} " + " / ".join(f"{r[key]:,.1f}" if isinstance(r[key], float) else f"{r[key]:,}" for r in runs)
            for key in heads))
    return combine(runs)


def combine(values, key=""):
    """The median of numbers (the maximum for counts of what went wrong), field by field."""
    first = values[0]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numbers:
        return max(values) if key in WORST else statistics.median(values)
    if isinstance(first, dict) and all(isinstance(v, dict) and v.keys() == first.keys() for v in values):
        return {k: combine([v[k] for v in values], k) for k in first}
    if isinstance(first, list) and all(isinstance(v, list) and len(v) == len(first) for v in values):
        return [combine(list(column), key) for column in zip(*values)]
    return first


def rows_held(table, sizes, quick, peer):
    ours = attempt(table, "streams held (ours)", held, "ours", sizes.held, sizes)
    theirs = attempt(table, "streams held (peer)", held, "peer", sizes.held_peer, sizes) if peer else None
    quick_note = f"n/a: --quick holds {sizes.held:,}" if quick else None
    if ours is None and theirs is None:
        table.add("streams held by one gevent worker, each got the broadcast ↑", "error", "≥ 15,000")
        return
    o, p = ours or {}, theirs or {}
    held_count = o.get("exactly_one")
    table.add("streams held by one gevent worker, each got the broadcast ↑",
              f"{n(held_count)} of {n(o['asked'])}" if ours else "error", "≥ 15,000",
              met(held_count is not None and held_count >= 15_000, quick_note),
              f"{n(p['exactly_one'])} of {n(p['asked'])}" if theirs else "—",
              ratio(held_count, p.get("exactly_one")), cpu(o.get("client_cpu"), p.get("client_cpu")))
    table.add("RSS per held stream (worker VmRSS after − before) / streams ↓",
              f"{o['rss_per_stream_kb']:.1f} KB" if ours else "error", "≤ 16 KB",
              met(ours is not None and o["rss_per_stream_kb"] <= 16),
              f"{p['rss_per_stream_kb']:.1f} KB" if theirs else "—",
              ratio(o.get("rss_per_stream_kb"), p.get("rss_per_stream_kb")))

    def conns(result):
        marks = result["redis_clients"]
        return " / ".join(n(marks[k]) for k in sorted(marks))

    def conn_points(result):
        return " / ".join(n(k) for k in sorted(result["redis_clients"]))

    if ours:
        marks = o["redis_clients"]
        top = marks[max(marks)]
        constant = len(set(v for k, v in marks.items() if k >= 1000)) <= 1 and top <= 10
        table.add(f"Redis connections at {conn_points(o)} streams ↓", conns(o), "small constant per process",
                  met(constant), conns(p) if theirs else "—",
                  ratio(top, p["redis_clients"][max(p["redis_clients"])] if theirs else None))
        if top > 10:
            table.note(f"Redis connections: the worker's command pool grew to {top} while streams were opened "
                       f"up to {sizes.clients * OPEN_CONCURRENCY} at a time (redis-py's ConnectionPool default max_connections=100, "
                       f"non-blocking: past it, MaxConnectionsError → 503); it is the opening burst, "
                       f"not the number of streams, that sets it.")
        if o.get("refusals_retried"):
            table.note(f"streams held (ours): {n(o['refusals_retried'])} stream requests were refused while "
                       f"opening ({o['statuses']}) and retried by the client, as EventSource would; e.g. "
                       f"{(o['refused_samples'] or [''])[-1][-160:].strip()!r}")
        table.note(f"streams held (ours): {n(o['opened'])} opened in {o['open_seconds']:.0f} s, worker CPU "
                   f"{o['worker_cpu']:.1f} s ({o['worker_cpu'] / max(1, o['opened'] + o['refusals_retried']) * 1e3:.2f} "
                   f"ms per open), RSS {n(o['rss_before_kb'])} → {n(o['rss_after_kb'])} KB.")
    if theirs:
        table.note(f"streams held (peer): {n(p['opened'])} opened in {p['open_seconds']:.0f} s, worker CPU "
                   f"{p['worker_cpu']:.1f} s, RSS {n(p['rss_before_kb'])} → {n(p['rss_after_kb'])} KB; "
                   f"refused and retried: {n(p['refusals_retried'])}.")


def rows_latency(table, sizes, peer):
    ours = attempt(table, "direct push latency (ours)", push_latency, "ours", sizes)
    theirs = attempt(table, "push latency (peer)", push_latency, "peer", sizes) if peer else None
    o, p = ours or {}, theirs or {}

    def figure(r):
        return f"p50 {ms(r['p50_ms'])} / p99 {ms(r['p99_ms'])} ms, lost {n(r['lost'])}"

    table.add(f"direct push, {sizes.latency_streams:,} users × 1 stream, {sizes.rate:g} pushes/s, 1 worker ↓",
              figure(o) if ours else "error", "p99 ≤ 25 ms",
              met(ours is not None and o["p99_ms"] is not None and o["p99_ms"] <= 25 and not o["lost"]),
              figure(p) if theirs else "—", ratio(o.get("p99_ms"), p.get("p99_ms")),
              cpu(o.get("client_cpu"), p.get("client_cpu")))
    if ours:
        table.note(f"direct push (ours): POST /v1/notifications/sse answered in p50 {ms(o['push_request_p50_ms'])} / "
                   f"p99 {ms(o['push_request_p99_ms'])} ms; {o['achieved_rate']:.1f} pushes/s achieved "
                   f"({o['late_pushes']} late); worker CPU {o['worker_cpu']:.1f} s = "
                   f"{o['worker_cpu'] / max(1, o['received']) * 1e6:.0f} µs per delivery incl. the requests.")
    if theirs:
        api = p.get("peer_api_push_seconds")
        table.note(f"push latency (peer): published by the benchmark straight into Redis (one Lua call per 1,000 "
                   f"PUBLISHes), because the peer's own `sse.publish` opens a new Redis client per channel: one "
                   f"POST /publish to {sizes.latency_streams:,} channels took "
                   f"{'—' if api is None else f'{api:.2f} s'}, so 10/s cannot be sent through it. Worker CPU "
                   f"{p['worker_cpu']:.1f} s = {p['worker_cpu'] / max(1, p['received']) * 1e6:.0f} µs per delivery.")


def rows_full_path(table, sizes):
    r = attempt(table, "full path", full_path, sizes)
    if r is None:
        table.add("full path trigger → RQ → stored → stream ↓", "error", "p99 ≤ 100 ms")
        return
    workers = "1 RQ worker" if r["rq_workers"] == 1 else f"{r['rq_workers']} RQ workers"
    table.add(f"full path trigger → {workers} → stored → stream, {r['streams']:,} users, {sizes.rate:g} triggers/s ↓",
              f"p50 {ms(r['p50_ms'])} / p99 {ms(r['p99_ms'])} ms, lost {n(r['lost'])}", "p99 ≤ 100 ms",
              met(r["p99_ms"] is not None and r["p99_ms"] <= 100 and not r["lost"]), "— (no storage)", "—",
              cpu(r["client_cpu"], None))
    if r["still_arriving_after_180s"]:
        table.note(f"full path: {n(r['lost'])} notifications were still arriving when the benchmark stopped "
                   f"waiting (180 s after the last trigger): late, not necessarily lost; their latency is not "
                   f"in the percentiles, which are therefore optimistic.")
    table.note(f"full path: event task/task_due (in-app only); p50 of the first / last tenth of the deliveries "
               f"{ms(r['p50_first_tenth_ms'])} / {ms(r['p50_last_tenth_ms'])} ms (a growing backlog shows as "
               f"last >> first); 202 in p50 {ms(r['accept_p50_ms'])} ms; "
               f"{r['achieved_rate']:.1f} triggers/s sent; web worker CPU {r['web_cpu']:.1f} s, RQ worker CPU "
               f"{r['rq_cpu']:.1f} s for {n(r['received'])} stored-and-delivered notifications.")


def rows_saturation(table, sizes, peer):
    ours = attempt(table, "saturation (ours)", saturation, "ours", sizes.saturation_streams, sizes)
    theirs = attempt(table, "saturation (peer)", saturation, "peer",
                     sizes.saturation_streams_peer, sizes) if peer else None
    o, p = ours or {}, theirs or {}

    def figure(r):
        return f"{n(r['rate'])}/s, lost {n(r['lost'])}"

    table.add(f"deliveries/s to {sizes.saturation_streams:,} streams, 2 workers ↑", figure(o) if ours else "error",
              "≥ 60,000/s, 0 lost", met(ours is not None and o["rate"] >= 60_000 and not o["lost"]),
              (figure(p) + (f" ({n(p['streams'])} streams)" if p["streams"] != sizes.saturation_streams else ""))
              if theirs else "—",
              ratio(o.get("rate"), p.get("rate")), cpu(
                  (o["client_cpu"] + o["driver_cpu"]) if ours else None,
                  (p["client_cpu"] + p["driver_cpu"]) if theirs else None))
    for label, r in (("ours", o), ("peer", p)):
        if r:
            table.note(f"saturation ({label}): {n(r['received'])} of {n(r['expected'])} frames in {r['seconds']:.1f} s "
                       f"({r['broadcasts']} broadcasts); workers' CPU {r['worker_cpu']:.1f} s = "
                       f"{r['worker_cpu'] / max(1, r['received']) * 1e6:.1f} µs per delivery; clients "
                       f"{r['client_cpu']:.1f} s, publisher {r['driver_cpu']:.1f} s; streams cut {r['streams_cut']}; "
                       f"open files per worker {r['fds_per_worker']}.")


def rows_write_path(table, quick):
    args = ["--users", "2000", "--triggers", "300", "--warmup", "50", "--concurrency", "16"] if quick else []
    command = " ".join(["python -m bench.write_path", *args])
    figures = {}   # name -> [(measured, target, ok, detail) of each run]
    proc = None
    for _ in range(REPEAT):
        log(f"write path: {command}")
        try:
            proc = subprocess.run([sys.executable, "-m", "bench.write_path", *args], cwd=ROOT,
                                  capture_output=True, text=True, timeout=1800)
        except subprocess.TimeoutExpired:
            table.note(f"write path: `{command}` timed out")
            continue
        for line in proc.stdout.splitlines():
            parts = [part.strip() for part in line.split(" | ")]
            if len(parts) == 5 and re.match(r"^\([a-z]'?\)", parts[0]):
                figures.setdefault(parts[0], []).append(parts[1:])
    found = 0
    for name, runs in figures.items():
        ordered = sorted(runs, key=lambda run: float(run[0]))
        measured, target, ok, detail = ordered[(len(ordered) - 1) // 2]   # the median run
        load = re.search(r"client CPU ([\d.]+) s", detail)
        table.add(f"write path {name} ↑", f"{measured}/s", target.replace(">=", "≥"),
                  "yes" if ok == "yes" else "NO", "—", "—", load.group(1) if load else "—")
        table.note(f"write path {name.split(')')[0]}): {detail}"
                   + (f" (median of {len(runs)} runs: {' / '.join(run[0] for run in runs)})" if len(runs) > 1 else ""))
        found += 1
    if not found:
        tail = ((proc.stderr or proc.stdout).strip().splitlines()[-1:] if proc else []) or ["no output"]
        table.add("write path (bench/write_path.py)", f"failed (exit {proc.returncode if proc else '—'})",
                  "see bench/README.md")
        table.note(f"write path: `{command}` failed: {tail[0][:300]}")
    else:
        table.note(f"write path: `{command}` (bench/write_path.py; its own section in bench/README.md).")


def rows_inbox(table, quick):
    sizes = inbox.QUICK if quick else inbox.FULL
    report = attempt(table, "inbox", inbox.benchmark, sizes)
    scale = f"{sizes.notifications / 1e6:g} M notifications / {sizes.users:,} users"
    if report is None:
        table.add(f"GET /v1/notifications, {scale}, {sizes.rate:g} requests/s ↓", "error", "p99 ≤ 20 ms")
        return
    if REPEAT > 1:
        table.note(f"inbox: the figures are medians of {REPEAT} runs.")
    bad = [f"{p['user']} user, {p['use']}, statement {p['statement']}: {', '.join(p['problems'])}"
           for p in report["plans"] if p["problems"]]
    for r in report["runs"]:
        table.add(f"GET /v1/notifications, {scale}, {sizes.rate:g} requests/s, {r['workers']} web worker(s) ↓",
                  f"p50 {ms(r['p50_ms'])} / p99 {ms(r['p99_ms'])} ms, {r['errors']} errors",
                  "p99 ≤ 20 ms; index scans",
                  met(r["p99_ms"] <= inbox.TARGET_P99_MS and not r["errors"] and not bad,
                      f"n/a: --quick has {sizes.notifications / 1e6:g} M rows" if quick else None),
                  "—", "—", cpu(r["client_cpu_s"], None))
        table.note(f"inbox, {r['workers']} web worker(s): {r['requests']:,} requests at {r['achieved_rate']:.1f}/s "
                   f"(open loop), p95 {ms(r['p95_ms'])} / max {ms(r['max_ms'])} ms; per request: web {r['web_cpu_ms_per_request']:.2f} ms "
                   f"CPU, PostgreSQL {r['pg_cpu_ms_per_request']:.2f} ms CPU, {r['blocks_read_per_request']:.1f} blocks read "
                   f"outside shared_buffers; machine {r['machine']['busy'] * 100:.0f} % busy during the run.")
    db = report["database"]
    cached = [rel["cached"] for rel in db["relations"]]
    table.note(f"inbox: database {db['database_bytes'] / 2 ** 30:.1f} GB (cached as bench_inbox_*; shared_buffers "
               f"{db['shared_buffers']}, page cache held "
               f"{'?' if None in cached else f'{sum(cached) / 2 ** 30:.1f} GB'}); EXPLAIN of "
               f"{len(report['plans'])} statements: " + ("; ".join(bad) if bad else "index scans only, no sort") +
               " (python -m bench.inbox prints them).")


# ------------------------------------------------------------------ main


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (~2-3 minutes)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--no-peer", action="store_true", help="skip Flask-SSE")
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes")
    parser.add_argument("--rq-workers", type=int, default=1, help="`python -m workers` processes in the full path")
    parser.add_argument("--output", default=os.path.join(HERE, "results.md"), help="the markdown table")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each scenario; medians are shown")
    args = parser.parse_args()
    global REPEAT
    REPEAT = max(1, args.repeat)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop servers, drop databases
    raise_nofile()
    if not args.no_peer:
        ensure_peer_installed()
    sizes = QUICK if args.quick else FULL
    sizes = dataclasses.replace(sizes, clients=args.clients, rq_workers=args.rq_workers)
    peer = not args.no_peer
    before = machine()
    started = time.monotonic()
    table = Table()
    if "held" in only:
        rows_held(table, sizes, args.quick, peer)
    if "latency" in only:
        rows_latency(table, sizes, peer)
    if "full-path" in only:
        rows_full_path(table, sizes)
    if "saturation" in only:
        rows_saturation(table, sizes, peer)
    if "write-path" in only:
        rows_write_path(table, args.quick)
    if "inbox" in only:
        rows_inbox(table, args.quick)
    after = machine()
    minutes = (time.monotonic() - started) / 60

    command = "python -m bench.run" + (" --quick" if args.quick else "") + \
        (f" --only {args.only}" if only != set(SCENARIOS) else "") + (" --no-peer" if args.no_peer else "") + \
        (f" --rq-workers {args.rq_workers}" if args.rq_workers != 1 else "") + \
        (f" --clients {args.clients}" if args.clients != 2 else "") + \
        (f" --repeat {REPEAT}" if REPEAT != 1 else "")
    header = [
        f"machine: {before['nproc']} cores ({before['cpu']}), Python {before['python']}, open files {before['nofile']}; "
        f"load average {before['loadavg'][0]:.1f} at start, {after['loadavg'][0]:.1f} at end",
        f"command: {command}   ({datetime.datetime.now():%Y-%m-%d %H:%M}, {minutes:.1f} min)",
        f"load generator: {sizes.clients} client processes (asyncio, raw sockets) + the driver; its CPU seconds are "
        f"in the last column. ↑ higher is better, ↓ lower is better; ratio = ours / peer.",
    ]
    print()
    print("\n".join(header))
    print()
    print(table.render())
    print()
    for note in table.notes:
        print(f"- {note}")
    with open(args.output, "w") as out:
        out.write("# Benchmark results\n\n")
        out.write("\n".join(f"{line}  " for line in header) + "\n\n")
        out.write(table.render(markdown=True) + "\n\n")
        out.write("\n".join(f"- {note}" for note in table.notes) + "\n")
    print(f"\n(written to {os.path.relpath(args.output, os.getcwd())})")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:   # the scenarios' `with` blocks have stopped their servers by now
        log("interrupted")
        sys.exit(130)
