#!/usr/bin/env python3
"""Window-level AUC of exported networks on windows from clips they never heard.

A quick like-for-like look at what a network learned, before any calibration: the
same mixer that trains them (`crnn.FrameMixer`, with `finetune`'s augmentation)
makes `--windows` windows from the clips of fold `--fold` only, and each network
given scores them (`groups` output; for a frame-level one, its highest frame). A
window is positive for a group when its event is heard in it. Use the networks a
`hearken train --cache DIR` run kept for that fold (`*-net-fold<K>-*.onnx`, trained
with fold K left out).

    /usr/bin/python3 training/window_auc.py make --data NET_DATA_DIR --fold 0 W.npz
    python3 training/window_auc.py score W.npz NAME=net.onnx ...

`make` needs torch (the mixer and frontend: Debian's python3-torch); `score` needs
only numpy and onnxruntime (`pip install onnxruntime`, e.g. in a venv). NET_DATA_DIR
is the `net-data` folder `hearken train` exports (kept while it runs).
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def auc(p, t):
    pos, neg = p[t], p[~t]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    r = np.argsort(np.argsort(np.concatenate([pos, neg])))
    return (r[: len(pos)].sum() - len(pos) * (len(pos) - 1) / 2) / (len(pos) * len(neg))


def make(args):
    import json

    import torch
    from crnn import FrameMixer
    from finetune import Clips
    from frontend import LogMel, RATE

    groups = args.groups.split(",")
    clips = Clips(args.data, groups, exclude_fold=-1)
    # Only the chosen fold's clips.
    with open(os.path.join(args.data, "clips.json")) as f:
        meta = [c for c in json.load(f)["clips"] if c["fold"] == args.fold]
    clips.events = {g: [c for c in meta if c["group"] == g] for g in groups}
    clips.backgrounds = [c for c in meta if c["group"] is None]
    mixer = FrameMixer(clips, groups, 2 * RATE, np.random.default_rng(args.seed))
    xs, ys = zip(*(mixer.example() for _ in range(args.windows)))
    mel = LogMel()(torch.from_numpy(np.stack(xs))).numpy()
    np.savez(args.out, mel=mel, y=np.stack(ys).max(axis=1) > 0.5, groups=np.array(groups))


def score(args):
    import onnxruntime as ort

    w = np.load(args.windows_file)
    mel, y, groups = w["mel"], w["y"], [str(g) for g in w["groups"]]
    print("group        " + "".join(f"{n.split('=')[0]:>12}" for n in args.nets) + "   positives")
    scores = []
    for spec in args.nets:
        s = ort.InferenceSession(spec.split("=", 1)[1])
        scores.append(np.stack([s.run(["groups"], {"mel": mel[i : i + 1]})[0][0]
                                for i in range(len(mel))]))
    for k, g in enumerate(groups):
        print(f"{g:<13}" + "".join(f"{auc(sc[:, k], y[:, k]):>12.3f}" for sc in scores)
              + f"   {int(y[:, k].sum())}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--data", required=True)
    m.add_argument("--fold", type=int, default=0)
    m.add_argument("--groups", default="glass,gunshot,siren,smoke_alarm,scream")
    m.add_argument("--windows", type=int, default=300)
    m.add_argument("--seed", type=int, default=5)
    m.add_argument("out")
    sc = sub.add_parser("score")
    sc.add_argument("windows_file")
    sc.add_argument("nets", nargs="+", help="NAME=model.onnx")
    args = ap.parse_args()
    make(args) if args.cmd == "make" else score(args)


if __name__ == "__main__":
    main()
