#!/usr/bin/env python3
"""Held-out detection quality of one or more detector folders over several seeds.

A single `hearken eval` run cannot separate two recipes: one seed's recall moves by
about 0.1 from where the events land alone. This runs `hearken eval --json` for each
folder and seed (the same held-out mixtures for every folder: same seed, same
events, same background), and prints per group the mean and spread (min-max) of
recall and false alarms per hour at the detectors' own thresholds, the best recall
at <= 1 and <= 0.1 false alarms per hour on the threshold sweep, the median latency,
and the events found per SNR summed over seeds.

    tools/eval-seeds.py [--seeds 1,2,3] [--background-h 6] [--bin target/release/hearken]
                        [--no-skip-quiet] [--json OUT] NAME=DETECTORS_DIR [NAME=DIR ...]

`--no-skip-quiet` evaluates with `[model] skip_quiet_windows = false` (scoring
every window; skipping quiet ones is the default).

`raw` as DIR evaluates the raw AudioSet scores (detectors off, 10 s windows). Runs
one eval at a time (each uses both cores). Needs the models installed
(tools/install-models.sh) and the held-out set in $HEARKEN_SHARED/eval-dev.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run_eval(binary, detectors, seed, background_h, work, skip_quiet=True):
    cfg = Path(work) / "eval.toml"
    if detectors == "raw":
        cfg.write_text('[detection]\ndetectors = "off"\n')
    else:
        cfg.write_text(
            "[model]\nwindow_s = 2.0\nhop_s = 0.5\n"
            + ("" if skip_quiet else "skip_quiet_windows = false\n")
            + f'[detection]\ndetectors = "{Path(detectors).resolve()}"\n'
        )
    out = subprocess.run(
        [binary, "eval", "--json", "--config", str(cfg), "--seed", str(seed),
         "--background-h", str(background_h), "--work-dir", str(Path(work) / "w")],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def spread(xs, fmt="{:.2f}"):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(statistics.mean(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"


def summarise(reports):
    groups = [g["group"] for g in reports[0]["groups"]]
    rows = {}
    for g in groups:
        per = [next(x for x in r["groups"] if x["group"] == g) for r in reports]
        best1 = [dict(r["best_at_1_per_h"])[g] for r in reports]
        best01 = [dict(r["best_at_0_1_per_h"])[g] for r in reports]
        snr = {}
        for r in reports:
            for f in dict(r["found_by_snr"])[g]:
                s = snr.setdefault(f["snr_db"], [0, 0])
                s[0] += f["found"]
                s[1] += f["events"]
        rows[g] = {
            "events": sum(p["events"] for p in per),
            "recall": [p["recall"] for p in per],
            "fa_per_h": [p["false_alarms_per_hour"] for p in per],
            "recall_at_1_per_h": [b["recall"] if b else 0.0 for b in best1],
            "recall_at_0_1_per_h": [b["recall"] if b else 0.0 for b in best01],
            "latency_median_s": [p["latency_median_s"] for p in per],
            "found_by_snr": snr,
        }
    return {
        "seeds": [r["seed"] for r in reports],
        "background_h": [r["background_s"] / 3600 for r in reports],
        "groups": rows,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", help="NAME=DETECTORS_DIR (or NAME=raw)")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--background-h", type=float, default=6.0)
    ap.add_argument("--bin", default="target/release/hearken")
    ap.add_argument("--json", help="write the summary here too")
    ap.add_argument("--no-skip-quiet", dest="skip_quiet", action="store_false",
                    help="with [model] skip_quiet_windows = false")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    summary = {}
    for spec in args.folders:
        name, _, folder = spec.partition("=")
        reports = []
        for seed in seeds:
            with tempfile.TemporaryDirectory() as work:
                print(f"eval-seeds: {name} seed {seed}...", file=sys.stderr, flush=True)
                reports.append(run_eval(args.bin, folder, seed, args.background_h, work,
                                        args.skip_quiet))
        summary[name] = summarise(reports)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    for name, s in summary.items():
        bg = statistics.mean(s["background_h"])
        print(f"\n{name}: seeds {s['seeds']}, {bg:.1f} h of background per seed; "
              "mean (min-max) over seeds")
        print("| group | events | recall | false alarms/h | recall at <= 1 FA/h | "
              "recall at <= 0.1 FA/h | latency median | found at each SNR |")
        print("|---|---|---|---|---|---|---|---|")
        for g, r in s["groups"].items():
            snr = ", ".join(f"{k:+.0f} dB {v[0]}/{v[1]}" for k, v in sorted(
                r["found_by_snr"].items(), key=lambda kv: -float(kv[0])))
            print(f"| {g} | {r['events']} | {spread(r['recall'])} | {spread(r['fa_per_h'])} | "
                  f"{spread(r['recall_at_1_per_h'])} | {spread(r['recall_at_0_1_per_h'])} | "
                  f"{spread(r['latency_median_s'], '{:.2f} s')} | {snr} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
