#!/usr/bin/env python3
"""A fine-tuned mn04 as the daemon runs it: only the blocks training changed.

`finetune.py` trains mn04's blocks from `--train-from` up and leaves the lower ones
exactly as shipped. Exported whole, the daemon would run those lower blocks twice on
every window — once in mn04 for its own scores and embedding, once in the network.
So the network is exported as its *tail*: its input is the shipped mn04's own tensor
where the trained blocks begin (an ONNX input named like that tensor, e.g.
`/m/features.9/Add_output_0`), and the daemon asks mn04 for that tensor beside its
two outputs and hands it on. Outputs are the whole network's: `probs`, `embedding`,
`groups`.

By hand, to convert a network exported whole (before tails) or to rebuild one whole
(for tests and `window_auc.py`):

    python3 training/tail.py split --base model.onnx --net net.onnx --out tail.onnx
    python3 training/tail.py split --base model.onnx --detectors DIR
    python3 training/tail.py join --base model.onnx --net tail.onnx --out whole.onnx

`split --detectors DIR` rewrites DIR/net.onnx as its tail and the sha256 its detector
files record. `split` refuses a network whose lower blocks differ from the base's.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import sys

import onnx
import torch
from onnx import numpy_helper
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mn04 import Mn04  # noqa: E402

OUTPUTS = ["probs", "embedding", "groups"]
_PARAM = re.compile(r"params\.(\w+)$")
_HEAD = re.compile(r"head\.(\d+)\.(weight|bias)$")
_BLOCK = re.compile(r"features_(\d+)__")


def crossing(m: Mn04, cut: int) -> str:
    """The one tensor the steps from `cut` on read from the steps before it."""
    made = {"mel"} | {s[2] for s in m.steps[:cut]}
    used = {i for s in m.steps[cut:] for i in s[1] if i in made}
    if len(used) != 1:
        raise SystemExit(f"tail: {len(used)} tensors cross the cut at step {cut}: {sorted(used)}")
    return used.pop()


class Net(nn.Module):
    """mn04 with a head: (AudioSet logits, embedding, group logits) — `finetune.py`'s."""

    def __init__(self, base: Mn04, groups: int, hidden: int = 128):
        super().__init__()
        self.base = base
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(384, hidden), nn.ReLU(),
                                  nn.Linear(hidden, groups))

    def forward(self, mel):
        logits, e = self.base(mel)
        return logits, e, self.head(e)

    def from_trunk(self, env: dict, cut: int):
        logits, e = self.base.from_trunk(env, cut)
        return logits, e, self.head(e)


class Whole(nn.Module):
    """The whole network from the mel: probabilities, embedding, group probabilities."""

    def __init__(self, net: Net):
        super().__init__()
        self.net = net

    def forward(self, mel):
        logits, e, g = self.net(mel)
        return torch.sigmoid(logits), e, torch.sigmoid(g)


class Tail(nn.Module):
    """The same outputs from mn04's tensor `name` (the input of step `cut`)."""

    def __init__(self, net: Net, cut: int, name: str):
        super().__init__()
        self.net, self.cut, self.name = net, cut, name

    def forward(self, x):
        logits, e, g = self.net.from_trunk({self.name: x}, self.cut)
        return torch.sigmoid(logits), e, torch.sigmoid(g)


def _export(module: nn.Module, x: torch.Tensor, name: str, out: str) -> None:
    torch.onnx.export(module.eval(), (x,), out, input_names=[name], output_names=OUTPUTS,
                      dynamic_axes={name: {3: "frames"}}, opset_version=17,
                      do_constant_folding=True)


def export_tail(net: Net, train_from: int, out: str, frames: int = 200) -> str:
    """Writes the tail of `net` (trained from block `train_from`) to `out`; returns
    the name of the mn04 tensor it reads."""
    cut = net.base.cut(train_from)
    name = crossing(net.base, cut)
    with torch.no_grad():
        x = net.base.trunk(torch.zeros(1, 1, 128, frames), cut)[name]
    _export(Tail(net, cut, name), x, name, out)
    return name


def export_whole(net: Net, out: str, frames: int = 200) -> None:
    _export(Whole(net), torch.zeros(1, 1, 128, frames), "mel", out)


def load(net_path: str, base_path: str) -> tuple[Net, int | None]:
    """A network exported whole or as a tail, with the base's weights wherever the
    file has none; and the block its training began at (None for a whole one)."""
    g = onnx.load(net_path).graph
    base = Mn04(base_path).eval()
    params, head = {}, {}
    for t in g.initializer:
        a = torch.from_numpy(numpy_helper.to_array(t).copy())
        if m := _HEAD.search(t.name):
            head[(int(m.group(1)), m.group(2))] = a
        elif m := _PARAM.search(t.name):
            params[m.group(1)] = a
    if not head or not params:
        raise SystemExit(f"tail: {net_path} is not a network fine-tuned by finetune.py")
    net = Net(base, groups=head[(3, "weight")].shape[0], hidden=head[(1, "weight")].shape[0])
    with torch.no_grad():
        for (i, kind), a in head.items():
            getattr(net.head[i], kind).copy_(a)
        for key, a in params.items():
            if key not in base.params:
                raise SystemExit(f"tail: {net_path} has weights {key} that mn04 has not")
            base.params[key].copy_(a)
    name = g.input[0].name
    if name == "mel":
        return net, None
    step = next((i for i, s in enumerate(base.steps) if s[2] == name), None)
    if step is None:
        raise SystemExit(f"tail: {net_path} reads {name}, which mn04 does not make")
    first = next(s[4] for s in base.steps[step + 1:] if s[4].startswith("features."))
    return net, int(first.split(".")[1])


def lower_blocks_unchanged(net: Net, base_path: str, train_from: int) -> None:
    """Refuses a network whose blocks under `train_from` differ from the base's."""
    base = Mn04(base_path)
    for key, p in net.base.params.items():
        m = _BLOCK.match(key)
        if m and int(m.group(1)) < train_from and not torch.equal(p, base.params[key]):
            raise SystemExit(f"tail: block {m.group(1)} ({key}) differs from the base's: "
                             f"this network was trained below block {train_from}")


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 16), b""):
            h.update(b)
    return h.hexdigest()


def split(base: str, net_path: str, out: str, train_from: int) -> str:
    net, already = load(net_path, base)
    if already is not None:
        raise SystemExit(f"tail: {net_path} is a tail already (from block {already})")
    lower_blocks_unchanged(net, base, train_from)
    return export_tail(net, train_from, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=["split", "join"])
    ap.add_argument("--base", required=True, help="the shipped mn04 model.onnx")
    ap.add_argument("--net", help="the network to convert")
    ap.add_argument("--out", help="where to write it")
    ap.add_argument("--detectors", help="split: convert DIR/net.onnx in place")
    ap.add_argument("--train-from", type=int, default=10, help="split: first trained block")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.action == "join":
        if not (args.net and args.out):
            ap.error("join needs --net and --out")
        net, _ = load(args.net, args.base)
        export_whole(net.eval(), args.out)
        print(f"tail: wrote {args.out} (whole)")
        return 0
    if args.detectors:
        path = os.path.join(args.detectors, "net.onnx")
        tmp = path + ".tail.tmp"
        old = sha256(path)
        name = split(args.base, path, tmp, args.train_from)
        new = sha256(tmp)
        for f in sorted(glob.glob(os.path.join(args.detectors, "*.json"))):
            with open(f) as fh:
                d = json.load(fh)
            ref = d.get("net") if isinstance(d, dict) else None
            if ref and ref.get("file") == "net.onnx" and ref.get("sha256") == old:
                ref["sha256"] = new
                with open(f + ".tmp", "w") as fh:
                    json.dump(d, fh, indent=2)
                os.replace(f + ".tmp", f)
        os.replace(tmp, path)
        print(f"tail: {path} now reads {name}")
        return 0
    if not (args.net and args.out):
        ap.error("split needs --net and --out, or --detectors")
    name = split(args.base, args.net, args.out, args.train_from)
    print(f"tail: wrote {args.out}, reading {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
