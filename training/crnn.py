#!/usr/bin/env python3
"""Trains a small frame-level event detector (log-mel → CNN → GRU) on home-like mixtures.

`hearken train --method crnn` runs this, with the same arguments and data as
`finetune.py` (which see for `--data`, folds and the mixing): the windows are made by
the same `Mixer`, with the same augmentation, but the targets are per frame — a
group's target is 1 on the 20 ms frames where its placed event is heard (within 30 dB
of the event's own peak), not on the whole window — so the network learns where an
event starts, as DCASE's rare-sound-event CRNNs do.

The network (about 160 k weights): batch-normalised log-mels, three 3×3 conv blocks
(32, 64, 96 channels; mel bands pooled 4× each, time 2× once: 20 ms frames), a
one-way GRU of 96 units, so a frame's score depends only on what came before it, and
one logit per group per frame. The export takes the daemon's log-mel window
[1, 1, 128, frames] and gives `frames` [1, frames/2, G] and `groups` [1, G], the
highest frame probability within the window's newest `--hop-s` seconds: the daemon
scores each hop by the frames it added, with a full window of context behind them,
so an event is found in the hop where it starts, not when a window's pooled score
finally rises.

Deterministic for a seed on one machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from finetune import Mixer, announce, common_args, optimiser, seeded, spec_augment  # noqa: E402
from frontend import HOP, LogMel, RATE  # noqa: E402

#: Mel frames per network frame (10 ms → 20 ms).
TIME_POOL = 2


class FrameMixer(Mixer):
    """The finetune mixer with per-frame targets."""

    def example(self) -> tuple[np.ndarray, np.ndarray]:
        window, g, _, x = self.mixture()
        frames = ((self.n - 1) // HOP + 1) // TIME_POOL
        y = np.zeros((frames, len(self.groups)), np.float32)
        if g is not None:
            y[:, g] = frame_activity(x, frames)
        return window, y


def frame_activity(x: np.ndarray, frames: int) -> np.ndarray:
    """1 on the network frames where `x` is within 30 dB of its own loudest frame."""
    step = HOP * TIME_POOL
    n = min(frames, len(x) // step)
    act = np.zeros(frames, np.float32)
    if n == 0:
        return act
    p = (x[: n * step].reshape(n, step).astype(np.float64) ** 2).mean(axis=1)
    if p.max() <= 0:
        return act
    act[:n] = (10 * np.log10(p / p.max() + 1e-12) > -30).astype(np.float32)
    return act


class Crnn(nn.Module):
    """Log-mels [B, 1, 128, T] → frame logits [B, T / 2, G]."""

    def __init__(self, groups: int, channels=(32, 64, 96), rnn: int = 96):
        super().__init__()
        self.norm = nn.BatchNorm2d(1)
        layers, c_in = [], 1
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.MaxPool2d((4, TIME_POOL if i == 0 else 1)), nn.Dropout(0.1)]
            c_in = c
        self.conv = nn.Sequential(*layers)
        self.gru = nn.GRU(c_in * 2, rnn, batch_first=True)
        self.out = nn.Linear(rnn, groups)

    def forward(self, mel):
        h = self.conv(self.norm(mel))  # [B, C, 2, T/2]
        b, c, f, t = h.shape
        h = h.permute(0, 3, 1, 2).reshape(b, t, c * f)
        h, _ = self.gru(h)
        return self.out(h)


class Export(nn.Module):
    """What the daemon runs: frame probabilities and the newest hop's highest."""

    def __init__(self, net: Crnn, hop_frames: int):
        super().__init__()
        self.net, self.hop_frames = net, hop_frames

    def forward(self, mel):
        p = torch.sigmoid(self.net(mel))
        return p, p[:, -self.hop_frames:, :].amax(dim=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common_args(ap, lr=2e-3)
    ap.add_argument("--hop-s", type=float, default=0.5)
    args = ap.parse_args()

    rng, groups, clips, window = seeded(args)
    mixer = FrameMixer(clips, groups, window, rng)
    frontend = LogMel()
    net = Crnn(len(groups))
    params = list(net.parameters())
    opt, sched = optimiser(params, args)
    counts = announce("crnn", clips, params, args)
    t0 = time.time()
    for epoch in range(args.epochs):
        net.train()
        total = 0.0
        batches = math.ceil(args.windows / args.batch)
        for _ in range(batches):
            xs, ys = zip(*(mixer.example() for _ in range(args.batch)))
            with torch.no_grad():
                mel = frontend(torch.from_numpy(np.stack(xs)))
                spec_augment(mel, rng, frames=False)
            logits = net(mel)
            y = torch.from_numpy(np.stack(ys))[:, : logits.shape[1]]
            loss = F.binary_cross_entropy_with_logits(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) / batches
        print(f"crnn: epoch {epoch + 1}/{args.epochs}: frame loss {total:.4f}, "
              f"{time.time() - t0:.0f} s", flush=True)

    net.eval()
    hop_frames = max(1, int(round(args.hop_s * RATE / HOP / TIME_POOL)))
    export = Export(net, hop_frames).eval()
    mel = torch.zeros(1, 1, 128, int(round(args.window_s * RATE / HOP)))
    torch.onnx.export(export, (mel,), args.out, input_names=["mel"],
                      output_names=["frames", "groups"],
                      dynamic_axes={"mel": {3: "frames"}}, opset_version=17,
                      do_constant_folding=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"groups": groups, "seed": args.seed, "epochs": args.epochs,
                   "windows_per_epoch": args.windows, "batch": args.batch, "lr": args.lr,
                   "hop_frames": hop_frames, "exclude_fold": args.exclude_fold,
                   "event_clips": counts, "background_clips": len(clips.backgrounds),
                   "weights": sum(p.numel() for p in params),
                   "seconds": round(time.time() - t0, 1)}, f, indent=1)
    print(f"crnn: wrote {args.out} in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
