#!/usr/bin/env python3
"""Fine-tunes mn04 end to end on home-like mixtures: one output per detection group.

`hearken train --method net` runs this; it is not meant to be called by hand, but can be:

    python3 training/finetune.py --data DIR --base model.onnx --groups glass,gunshot \\
        --out net.onnx [--exclude-fold K] [--seed 1] [--epochs 6]

`DIR` holds what `hearken train` exported: `clips.f32` (every clip decoded to mono
32 kHz float32, back to back) and `clips.json` (per clip: name, group or null, label,
recording, fold, offset and length in samples). Clips of fold `--exclude-fold` are
left out, so that `hearken train` can score that fold with a network that never heard
it (cross-validation by source recording).

Each training example is a 2 s window made on the fly, as a microphone in a home
would hear it (see `Mixer`): a group's event (or, for a negative, an ordinary sound
placed as loud as an event would be) over a bed of one to three background sounds,
at −6…+12 dB, with gain, time shift, level ramps, pitch ±2 semitones, a random
low-pass/tilt EQ for cheap microphones and distance, and a synthetic room reverb.

The network: mn04's blocks from `--train-from` up are trained (the lower ones stay as
they are), with a small head on the 384-d embedding giving one logit per group.
mn04's own 527 AudioSet outputs are kept by distillation: on every window the loss
also pulls them towards what the untouched mn04 says, so fine-tuning does not forget
what AudioSet taught it. The export has mn04's two outputs and a third, `groups`
[1, G] (sigmoid applied), batch 1 and frames free, as tract runs fastest. It is the
network's *tail* (`tail.py`): the trained blocks only, reading the shipped mn04's own
tensor where they begin, which the daemon takes from its mn04 call on the same
window, so the untouched lower blocks are not run twice.

Deterministic for a seed on one machine (one thread of intra-op parallelism per core
count given by `--threads`).
"""

from __future__ import annotations

import argparse
import copy
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
from frontend import LogMel, RATE  # noqa: E402
from mn04 import Mn04  # noqa: E402
from tail import Net, export_tail  # noqa: E402


class Clips:
    """The exported clips: samples by index, split into events per group and backgrounds."""

    def __init__(self, data_dir: str, groups: list[str], exclude_fold: int):
        with open(os.path.join(data_dir, "clips.json")) as f:
            meta = json.load(f)
        self.samples = np.memmap(os.path.join(data_dir, "clips.f32"), dtype="<f4", mode="r")
        keep = [c for c in meta["clips"] if c["fold"] != exclude_fold]
        self.events = {g: [c for c in keep if c["group"] == g] for g in groups}
        self.backgrounds = [c for c in keep if c["group"] is None]
        for g, cs in self.events.items():
            if not cs:
                raise SystemExit(f"finetune: no event clips for group {g}")
        if not self.backgrounds:
            raise SystemExit("finetune: no background clips")

    def audio(self, clip: dict) -> np.ndarray:
        a = np.asarray(self.samples[clip["offset"] : clip["offset"] + clip["len"]], dtype=np.float32)
        return np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)


def active_span(x: np.ndarray, frame: int = 640) -> tuple[int, int]:
    """First and last sample of the frames within 30 dB of the loudest (the event)."""
    n = len(x) // frame
    if n == 0:
        return 0, len(x)
    p = (x[: n * frame].reshape(n, frame) ** 2).mean(axis=1) + 1e-12
    on = np.nonzero(10 * np.log10(p / p.max()) > -30)[0]
    return int(on[0]) * frame, min(len(x), int(on[-1] + 1) * frame)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2) + 1e-12))


class Mixer:
    """Makes training windows: a home's sound with or without one group's event."""

    def __init__(self, clips: Clips, groups: list[str], window: int, rng: np.random.Generator):
        self.c, self.groups, self.n, self.rng = clips, groups, window, rng

    def crop(self, x: np.ndarray, n: int) -> np.ndarray:
        """n samples of x from a random place (x repeated when shorter)."""
        if len(x) == 0:
            return np.zeros(n, np.float32)
        while len(x) < n:
            x = np.concatenate([x, x])
        s = self.rng.integers(0, len(x) - n + 1)
        return x[s : s + n]

    def bed(self) -> np.ndarray:
        """One to three background sounds at random levels, summed."""
        out = np.zeros(self.n, np.float32)
        for i in range(self.rng.integers(1, 4)):
            x = self.crop(self.c.audio(self.rng.choice(self.c.backgrounds)), self.n)
            out += x / rms(x) * 10 ** (self.rng.uniform(-12, 0) / 20) * (1.0 if i == 0 else 0.5)
        return out

    def place(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """The sound x laid into a window at a random time, with the share of its
        active part that falls inside the window."""
        a, b = active_span(x)
        x = x[a:b]
        out = np.zeros(self.n, np.float32)
        if len(x) >= self.n:
            s = self.rng.integers(0, len(x) - self.n + 1)
            out[:] = x[s : s + self.n]
            return out, 1.0
        # Anywhere from starting 0.25 s before the window's end to fully inside.
        start = self.rng.integers(0, self.n - min(len(x), self.n // 8) + 1)
        seg = x[: self.n - start]
        out[start : start + len(seg)] = seg
        return out, len(seg) / len(x)

    def augment(self, x: np.ndarray) -> np.ndarray:
        """Pitch, level ramp, EQ and reverb on a placed sound."""
        r = self.rng
        if r.random() < 0.5:  # pitch ±2 semitones (speed changes with it)
            f = 2 ** (r.uniform(-2, 2) / 12)
            idx = np.arange(0, len(x), f)
            x = np.interp(idx, np.arange(len(x)), x).astype(np.float32)
            x = np.pad(x, (0, max(0, self.n - len(x))))[: self.n]
        if r.random() < 0.3:  # level changes inside the clip
            x = x * np.linspace(10 ** (r.uniform(-10, 0) / 20), 1.0, len(x))[:: 1 if r.random() < 0.5 else -1].astype(np.float32)
        if r.random() < 0.5:  # cheap microphone, distance: low-pass and tilt
            spec = np.fft.rfft(x)
            freqs = np.fft.rfftfreq(len(x), 1 / RATE)
            cutoff = r.uniform(3000, 14000)
            tilt = r.uniform(-6, 3)  # dB per decade above 1 kHz
            gain = 1 / np.sqrt(1 + (freqs / cutoff) ** 4)
            gain *= 10 ** (tilt * np.log10(np.maximum(freqs, 1000) / 1000) / 20)
            x = np.fft.irfft(spec * gain, len(x)).astype(np.float32)
        if r.random() < 0.5:  # a living room: exponentially decaying noise, RT60 0.2–0.8 s
            rt60 = r.uniform(0.2, 0.8)
            n = int(rt60 * RATE)
            t = np.arange(n) / RATE
            ir = r.standard_normal(n) * np.exp(-6.9 * t / rt60)
            ir[0] = 0.0
            ir *= r.uniform(0.1, 0.5) / np.sqrt((ir ** 2).sum())
            ir[0] = 1.0
            wet = np.fft.irfft(np.fft.rfft(x, len(x) + n) * np.fft.rfft(ir, len(x) + n))[: len(x)]
            x = wet.astype(np.float32)
        return x

    def mixture(self):
        """One window: (samples, the group whose event is in it or None, the share of
        that event's active part inside the window, the sound placed over the bed as
        mixed, or None for the bed alone)."""
        r = self.rng
        bed = self.bed()
        kind = r.random()
        g, share, x = None, 0.0, None
        if kind < 0.5:  # an event
            g = r.integers(len(self.groups))
            x, share = self.place(self.c.audio(r.choice(self.c.events[self.groups[g]])))
        elif kind < 0.75:  # an ordinary sound as loud as an event would be
            x, _ = self.place(self.c.audio(r.choice(self.c.backgrounds)))
        if x is not None:
            x = self.augment(x)
            snr = r.uniform(-6, 12)
            a, b = active_span(x)
            if b > a:
                x = x / rms(x[a:b]) * rms(bed) * 10 ** (snr / 20)
            bed = bed + x
        bed = bed * 10 ** (r.uniform(-35, -10) / 20) / rms(bed)
        peak = np.abs(bed).max()
        if peak > 1.0:
            bed /= peak
        return bed.astype(np.float32), g, share, x

    def example(self) -> tuple[np.ndarray, np.ndarray]:
        """One window and its targets (1 per group whose event is heard in it)."""
        window, g, share, _ = self.mixture()
        y = np.zeros(len(self.groups), np.float32)
        if g is not None and share >= 0.3:
            y[g] = 1.0
        return window, y


def common_args(ap: argparse.ArgumentParser, lr: float) -> None:
    """The options every trainer here takes (`hearken train` passes them)."""
    ap.add_argument("--data", required=True)
    ap.add_argument("--groups", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--exclude-fold", type=int, default=-1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--windows", type=int, default=2000, help="windows per epoch")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--window-s", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))


def seeded(args) -> tuple[np.random.Generator, list[str], Clips, int]:
    """Seeds torch and numpy; returns the generator, groups, clips and window length."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    groups = args.groups.split(",")
    clips = Clips(args.data, groups, args.exclude_fold)
    return np.random.default_rng(args.seed), groups, clips, int(round(args.window_s * RATE))


def optimiser(params, args):
    """AdamW with a one-cycle schedule over the whole run."""
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * math.ceil(args.windows / args.batch)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps,
                                                    pct_start=0.15)


def announce(name: str, clips: Clips, params, args) -> dict:
    """Prints what a trainer is about to learn from; returns the clips per group."""
    counts = {g: len(cs) for g, cs in clips.events.items()}
    print(f"{name}: {counts} event clips, {len(clips.backgrounds)} backgrounds, "
          f"fold {args.exclude_fold} left out; {sum(p.numel() for p in params)} weights trained",
          flush=True)
    return counts


def spec_augment(mel: torch.Tensor, rng: np.random.Generator, frames: bool) -> None:
    """SpecAugment-style masks, in place: a few mel bands, and (with `frames`) frames."""
    for i in range(mel.shape[0]):
        if rng.random() < 0.5:
            f0 = rng.integers(0, 128 - 16)
            mel[i, :, f0 : f0 + rng.integers(4, 16)] = mel[i].mean()
        if frames and rng.random() < 0.5:
            t0_ = rng.integers(0, mel.shape[-1] - 20)
            mel[i, :, :, t0_ : t0_ + rng.integers(5, 20)] = mel[i].mean()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common_args(ap, lr=1e-3)
    ap.add_argument("--base", required=True, help="mn04 model.onnx")
    ap.add_argument("--train-from", type=int, default=10, help="first mn04 block trained")
    ap.add_argument("--distill", type=float, default=1.0, help="weight of the AudioSet distillation")
    args = ap.parse_args()

    rng, groups, clips, window = seeded(args)
    mixer = Mixer(clips, groups, window, rng)
    frontend = LogMel()
    teacher = Mn04(args.base).eval()
    for p in teacher.parameters():
        p.requires_grad = False
    student = copy.deepcopy(teacher)
    student.freeze_below(args.train_from)
    cut = teacher.cut(args.train_from)
    net = Net(student, len(groups))
    params = [p for p in net.parameters() if p.requires_grad]
    opt, sched = optimiser(params, args)
    counts = announce("finetune", clips, params, args)
    t0 = time.time()
    step = 0
    for epoch in range(args.epochs):
        net.train()
        # Frozen blocks run in eval mode either way (no batch-norm or dropout there).
        total = {"groups": 0.0, "distill": 0.0}
        batches = math.ceil(args.windows / args.batch)
        for _ in range(batches):
            xs, ys = zip(*(mixer.example() for _ in range(args.batch)))
            with torch.no_grad():
                mel = frontend(torch.from_numpy(np.stack(xs)))
                spec_augment(mel, rng, frames=True)
                trunk = teacher.trunk(mel, cut)
                target = torch.sigmoid(teacher.from_trunk(trunk, cut)[0])
            logits, _, g = net.from_trunk(trunk, cut)
            y = torch.from_numpy(np.stack(ys))
            loss_g = F.binary_cross_entropy_with_logits(g, y)
            loss_d = F.binary_cross_entropy_with_logits(logits, target)
            loss = loss_g + args.distill * loss_d
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            total["groups"] += float(loss_g) / batches
            total["distill"] += float(loss_d) / batches
        print(f"finetune: epoch {epoch + 1}/{args.epochs}: group loss {total['groups']:.4f}, "
              f"distillation {total['distill']:.4f}, {time.time() - t0:.0f} s", flush=True)

    net.eval()
    reads = export_tail(net, args.train_from, args.out, int(round(args.window_s * 100)))
    with open(args.out + ".json", "w") as f:
        json.dump({"groups": groups, "seed": args.seed, "epochs": args.epochs,
                   "windows_per_epoch": args.windows, "batch": args.batch,
                   "train_from": args.train_from, "reads": reads, "lr": args.lr, "distill": args.distill,
                   "exclude_fold": args.exclude_fold, "event_clips": counts,
                   "background_clips": len(clips.backgrounds),
                   "seconds": round(time.time() - t0, 1)}, f, indent=1)
    print(f"finetune: wrote {args.out} in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
