#!/usr/bin/python3
"""How often the evidence-clip speech check suppresses a clip, with and without speech.

For every event clip of $HEARKEN_SHARED/eval-dev (glass, gunshot, siren, smoke alarm,
scream) plus shared/audio/gunshots.wav, the clip alone and the clip with speech mixed
under it (shared/audio/speech_sample1.wav and speech_sample2.flac, looped, at 0 dB and
at -10 dB against the event's RMS) are classified by `hearken classify --json --patches`
in the daemon's windows (2 s every 0.5 s). A clip is suppressed when any speech class
(the ids hearken's clips.rs lists) reaches the threshold in any window — what the
daemon does before it writes a clip.

    /usr/bin/python3 tools/clip-speech-check.py [--bin target/release/hearken] [--threshold 0.5]

Needs numpy and soundfile (Debian: python3-numpy, python3-soundfile).
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

SPEECH_IDS = {"/m/09x0r", "/m/05zppz", "/m/02zsn", "/m/0ytgt", "/m/01h8n0",
              "/m/02qldy", "/m/0261r1", "/m/0brhx", "/m/02rtxlg"}
EVENTS = {"glass_breaking", "gunshot", "siren", "alarm_beep", "fire_alarm", "screaming"}


def mono(path):
    x, rate = sf.read(path, dtype="float32", always_2d=True)
    return x.mean(axis=1), rate


def speech_max(binary, files, indices):
    out = subprocess.run([binary, "classify", "--json", "--patches", "--window", "2",
                          "--hop", "0.5", *map(str, files)], capture_output=True, text=True)
    res = {}
    for line in out.stdout.splitlines():
        r = json.loads(line)
        if r.get("status") == "ok":
            res[r["file"]] = max(max(w["scores"][i] for i in indices) for w in r["windows"])
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/release/hearken")
    ap.add_argument("--threshold", type=str, default="0.3,0.5,0.7",
                    help="comma-separated thresholds to report")
    args = ap.parse_args()
    shared = Path(os.environ.get("HEARKEN_SHARED", "../shared"))
    with open(Path("models/efficientat-mn04/labels.csv")
              if Path("models/efficientat-mn04/labels.csv").exists()
              else shared / "models/efficientat-mn04/labels.csv") as f:
        indices = [int(r[0]) for r in csv.reader(f) if len(r) > 1 and r[1] in SPEECH_IDS]
    clips, kinds = [], []
    with open(shared / "eval-dev" / "labels.csv") as f:
        for row in csv.DictReader(f):
            if row["label"] in EVENTS:
                clips.append(shared / "eval-dev" / row["file"])
                kinds.append(row["label"])
    clips.append(shared / "audio" / "gunshots.wav")
    kinds.append("gunshot")
    thresholds = [float(t) for t in args.threshold.split(",")]
    speech = [mono(shared / "audio" / n) for n in ("speech_sample1.wav", "speech_sample2.flac")]
    with tempfile.TemporaryDirectory() as tmp:
        files = {"alone": [], "speech 0 dB": [], "speech -10 dB": []}
        for k, clip in enumerate(clips):
            x, rate = mono(clip)
            s, srate = speech[k % 2]
            s = np.interp(np.arange(int(len(s) * rate / srate)) * srate / rate, np.arange(len(s)), s)
            s = np.tile(s, int(np.ceil(len(x) / len(s))))[: len(x)]
            rms = lambda v: float(np.sqrt(np.mean(v ** 2))) + 1e-9
            files["alone"].append(clip)
            for name, db in (("speech 0 dB", 0.0), ("speech -10 dB", -10.0)):
                m = x + s * rms(x) / rms(s) * 10 ** (db / 20)
                m *= min(1.0, 0.95 / max(1e-9, float(np.abs(m).max())))
                p = Path(tmp) / f"{k}-{db:+.0f}.wav"
                sf.write(p, m, rate, subtype="PCM_16")
                files[name].append(p)
        report = {}
        for name, fs in files.items():
            got = speech_max(args.bin, fs, indices)
            pairs = [(got[str(f)], kind) for f, kind in zip(fs, kinds) if str(f) in got]
            scores = [v for v, _ in pairs]
            r = {"of": len(scores), "median_speech_score": round(float(np.median(scores)), 3)}
            for t in thresholds:
                by = {}
                for v, kind in pairs:
                    k = by.setdefault(kind, [0, 0])
                    k[0] += v >= t
                    k[1] += 1
                n = sum(v >= t for v in scores)
                r[f"suppressed at {t}"] = {"n": n, "share": round(n / max(len(scores), 1), 3),
                                           "by_kind": {k: f"{a}/{b}" for k, (a, b) in sorted(by.items())}}
            report[name] = r
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
