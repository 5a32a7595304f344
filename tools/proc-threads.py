#!/usr/bin/env python3
"""CPU seconds per thread (by name) and memory of a running process, from /proc.

    tools/proc-threads.py PID                  # one snapshot, JSON
    tools/proc-threads.py --diff A B SECONDS   # two snapshots -> % of one core

Used by tools/live-cost.sh. Standard library only."""

import json
import os
import sys


def snapshot(pid):
    hz = os.sysconf("SC_CLK_TCK")
    threads = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        # utime and stime, fields 14 and 15 of stat(5).
        threads[comm] = threads.get(comm, 0) + (int(fields[11]) + int(fields[12])) / hz
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    return {
        "threads": threads,
        "rss_kb": int(status["VmRSS"].split()[0]),
        "hwm_kb": int(status["VmHWM"].split()[0]),
    }


def diff(a, b, seconds):
    a, b = json.loads(a), json.loads(b)
    per = {
        k: round(100 * (v - a["threads"].get(k, 0)) / seconds, 3)
        for k, v in b["threads"].items()
    }
    per = {k: v for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v > 0}
    return {
        "seconds": round(seconds, 1),
        "cpu_percent": round(sum(per.values()), 2),
        "threads": per,
        "rss_mb": round(b["rss_kb"] / 1024, 1),
        "hwm_mb": round(b["hwm_kb"] / 1024, 1),
    }


if __name__ == "__main__":
    if sys.argv[1] == "--diff":
        print(json.dumps(diff(sys.argv[2], sys.argv[3], float(sys.argv[4])), indent=1))
    else:
        print(json.dumps(snapshot(sys.argv[1])))
