#!/usr/bin/env python3
"""How much of a sound event survives anonymisation, and how much of speech's order.

For every event clip of $HEARKEN_SHARED/eval-dev (glass, gunshot, siren, smoke alarm,
scream) plus shared/audio/gunshots.wav, `hearken classify --json` runs on the file as
is and anonymised (`--anonymize scramble` / `dp_noise`). A clip "keeps its group" when
one of the group's AudioSet labels is among the top 5 of the whole clip after
anonymising, counted over the clips where it was before. (What scramble does to
speech's order is measured by the unit test
`privacy::tests::scramble_destroys_the_order_of_speech_length_audio`.)

    tools/anonymize-check.py [--bin target/release/hearken] [--block-s 0.5]
"""

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

GROUPS = {
    "glass": ["Glass", "Shatter", "Breaking"],
    "gunshot": ["Gunshot, gunfire", "Machine gun", "Fusillade", "Artillery fire", "Cap gun", "Explosion"],
    "siren": ["Siren", "Civil defense siren", "Police car (siren)", "Ambulance (siren)",
              "Fire engine, fire truck (siren)", "Emergency vehicle"],
    "smoke_alarm": ["Smoke detector, smoke alarm", "Fire alarm", "Beep, bleep"],
    "scream": ["Screaming", "Yell", "Shout", "Children shouting"],
}
OF = {"glass_breaking": "glass", "gunshot": "gunshot", "siren": "siren",
      "alarm_beep": "smoke_alarm", "fire_alarm": "smoke_alarm", "screaming": "scream"}


def classify(binary, files, extra):
    out = subprocess.run([binary, "classify", "--json", *extra, *map(str, files)],
                         capture_output=True, text=True)
    res = {}
    for line in out.stdout.splitlines():
        r = json.loads(line)
        if r.get("status") == "ok":
            res[r["file"]] = [p["label"] for p in r["predictions"]]
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/release/hearken")
    ap.add_argument("--block-s", type=float, default=0.5)
    args = ap.parse_args()
    shared = Path(os.environ.get("HEARKEN_SHARED", "../shared"))
    clips = []
    with open(shared / "eval-dev" / "labels.csv") as f:
        for row in csv.DictReader(f):
            if row["label"] in OF:
                clips.append((str(shared / "eval-dev" / row["file"]), OF[row["label"]]))
    clips.append((str(shared / "audio" / "gunshots.wav"), "gunshot"))
    files = [c for c, _ in clips]
    runs = {
        "original": [],
        "scramble": ["--anonymize", "scramble", "--block-s", str(args.block_s)],
        "dp_noise": ["--anonymize", "dp_noise"],
    }
    got = {name: classify(args.bin, files, extra) for name, extra in runs.items()}
    report = {}
    for name in ("scramble", "dp_noise"):
        per = {}
        for f, g in clips:
            before = got["original"].get(f, [])
            if not any(l in GROUPS[g] for l in before):
                continue
            after = got[name].get(f, [])
            k = per.setdefault(g, [0, 0])
            k[1] += 1
            k[0] += any(l in GROUPS[g] for l in after)
        kept = sum(v[0] for v in per.values())
        total = sum(v[1] for v in per.values())
        report[name] = {"kept": kept, "of": total, "share": round(kept / max(total, 1), 3),
                        "by_group": {g: f"{v[0]}/{v[1]}" for g, v in sorted(per.items())}}
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
