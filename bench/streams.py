"""One stream scenario from the command line, printing its raw JSON (bench/run.py runs them all and
prints the table):

    python -m bench.streams held --streams 15000 [--peer] [--keep]
    python -m bench.streams latency [--peer] [--seconds 30]
    python -m bench.streams full-path [--rq-workers 2] [--event security/login_alert] [--channels system]
        [--beside-bulk 100000] [--urgent-worker]
    python -m bench.streams saturation --streams 10000 [--peer] [--window 8] [--masters 3]
    python -m bench.streams memory --streams 3000

The scenarios are bench/held.py, latency.py, full_path.py, saturation.py and memory.py; their
servers bench/rig.py, their load bench/load.py.
"""
import argparse
import json
import signal
import sys
from dataclasses import replace

from bench.full_path import full_path
from bench.held import held
from bench.latency import push_latency
from bench.measure import raise_nofile
from bench.memory import memory
from bench.rig import FULL, QUICK, add_rate_limits_option
from bench.saturation import saturation


def main():
    parser = argparse.ArgumentParser(description="One stream scenario (bench/run.py runs them all).")
    parser.add_argument("scenario", choices=["held", "latency", "full-path", "saturation", "memory"])
    parser.add_argument("--peer", action="store_true", help="run it against Flask-SSE instead")
    parser.add_argument("--via", choices=["api", "redis"], default="redis", help="peer latency: how to publish")
    parser.add_argument("--streams", type=int, help="streams (held, saturation)")
    parser.add_argument("--seconds", type=float, help="duration (latency, full-path, saturation)")
    parser.add_argument("--rq-workers", type=int, default=1, help="full-path: RQ worker processes")
    parser.add_argument("--event", default="task/task_due",
                        help="full-path: the triggers' group/event (security/login_alert: the urgent lane)")
    parser.add_argument("--channels", help="full-path: the triggers' channels, comma-separated (system: in-app only)")
    parser.add_argument("--beside-bulk", type=int, default=0,
                        help="full-path: a bulk trigger to this many other users fans out beside the measured ones")
    parser.add_argument("--urgent-worker", action="store_true", help="full-path: one more worker for the urgent lane")
    parser.add_argument("--recipients", type=int, help="full-path: each trigger to this many of the connected users"
                                                        ", in turn (default: all; a login alert has one)")
    parser.add_argument("--window", type=int, default=FULL.window, help="saturation: broadcasts in flight")
    parser.add_argument("--masters", type=int, default=0,
                        help="saturation: the stream channels on a local Redis Cluster of this many masters")
    add_rate_limits_option(parser)   # full-path
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # unwind: stop servers, drop the database
    raise_nofile()
    sizes = QUICK if args.quick else FULL
    if args.seconds:
        sizes = replace(sizes, latency_seconds=args.seconds, full_path_seconds=args.seconds,
                        saturation_seconds=args.seconds)
    sizes = replace(sizes, rq_workers=args.rq_workers, window=args.window)
    kind = "peer" if args.peer else "ours"
    if args.scenario == "held":
        result = held(kind, args.streams or (sizes.held_peer if args.peer else sizes.held), sizes, args.keep)
    elif args.scenario == "latency":
        result = push_latency(kind, sizes, args.keep, via=args.via)
    elif args.scenario == "memory":
        result = memory(args.streams or 3000, sizes, args.keep)
    elif args.scenario == "full-path":
        result = full_path(sizes, args.keep, args.event, args.channels.split(",") if args.channels else None,
                           args.beside_bulk, args.urgent_worker, args.rate_limits, args.recipients)
    else:
        result = saturation(kind, args.streams or sizes.saturation_streams, sizes, args.keep, masters=args.masters)
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
