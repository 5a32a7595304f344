"""EfficientAT mn04 as a trainable PyTorch module, built from the shipped ONNX graph.

The ONNX file is the model hearken runs, so it is the one source of truth: this module
walks its nodes and keeps every weight as a parameter, which gives exactly the network
the daemon runs (batch-norm already folded into the convolutions) without a second copy
of the upstream model code. Only the ops mn04's graph uses are supported; anything else
is an error naming the op.

The network is split where fine-tuning needs it: `features(mel)` runs the convolutional
blocks and the global pooling to the 384-d embedding, `classifier(embedding)` gives the
527 AudioSet logits. Blocks are named as in the graph (`features.0` … `features.16`,
`classifier`), so `freeze_below(k)` leaves blocks under k untouched.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
import torch.nn.functional as F

_BLOCK = re.compile(r"/m/(features\.\d+|classifier)/")


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _block_of(node) -> str:
    m = _BLOCK.match(node.name or (node.output[0] if node.output else ""))
    if not m and node.output:
        m = _BLOCK.match(node.output[0])
    return m.group(1) if m else "top"


class Mn04(nn.Module):
    """mn04 from its ONNX graph: `forward(mel)` → (logits [B, 527], embedding [B, 384]).

    `mel` is [B, 1, 128, frames]. Logits are before the sigmoid (the ONNX `probs` is
    their sigmoid)."""

    def __init__(self, onnx_path: str):
        super().__init__()
        g = onnx.load(onnx_path).graph
        consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.params = nn.ParameterDict()
        self.steps = []  # (op, inputs, output, attrs, block)
        self.pooled = None  # name of the global-pooled tensor (the embedding)
        self.logits = None  # name of the tensor that `probs` is the sigmoid of
        names = {}

        def param(name: str, block: str) -> str:
            key = f"{block}__{len(self.params)}".replace(".", "_")
            self.params[key] = nn.Parameter(torch.from_numpy(consts[name].copy()))
            names[name] = key
            return key

        for n in g.node:
            block = _block_of(n)
            a = _attrs(n)
            op = n.op_type
            if op in ("Conv", "Gemm"):
                ins = [n.input[0]] + [param(i, block) for i in n.input[1:]]
            elif op == "Reshape":
                # [1, C, 1, 1] → [-1, C, 1, 1]: any batch.
                shape = [int(v) for v in consts[n.input[1]]]
                a = {"shape": [-1] + shape[1:]}
                ins = [n.input[0]]
            elif op in ("Squeeze", "Unsqueeze"):
                ins = [n.input[0]]
            elif op in ("HardSwish", "Relu", "Sigmoid", "Add", "Mul", "ReduceMean",
                        "GlobalAveragePool", "Flatten"):
                ins = list(n.input)
            else:
                raise ValueError(f"mn04 graph: op {op} is not supported by training/mn04.py")
            if op == "GlobalAveragePool":
                self.pooled = n.output[0]
            if op == "Sigmoid" and n.output[0] == "probs":
                self.logits = n.input[0]
            self.steps.append((op, ins, n.output[0], a, block))
        if self.pooled is None or self.logits is None:
            raise ValueError("mn04 graph: no global pooling or no `probs` output found")
        # Steps up to the global pooling make the embedding; the rest classify it.
        self.split = 1 + next(i for i, s in enumerate(self.steps) if s[2] == self.pooled)

    def _run(self, env: dict, steps) -> None:
        for op, ins, out, a, _block in steps:
            x = [env[i] if i in env else self.params[i] for i in ins]
            if op == "Conv":
                p = a["pads"]
                y = F.conv2d(x[0], x[1], x[2] if len(x) > 2 else None, stride=a["strides"],
                             padding=(p[0], p[1]), dilation=a["dilations"], groups=a["group"])
            elif op == "Gemm":
                y = F.linear(x[0], x[1], x[2] if len(x) > 2 else None)
            elif op == "HardSwish":
                y = F.hardswish(x[0])
            elif op == "Relu":
                y = F.relu(x[0])
            elif op == "Sigmoid":
                y = torch.sigmoid(x[0])
            elif op == "Add":
                y = x[0] + x[1]
            elif op == "Mul":
                y = x[0] * x[1]
            elif op == "ReduceMean":
                y = x[0].mean(dim=a["axes"], keepdim=bool(a.get("keepdims", 1)))
            elif op == "GlobalAveragePool":
                y = x[0].mean(dim=(2, 3), keepdim=True)
            elif op == "Flatten":
                y = x[0].flatten(1)
            elif op == "Reshape":
                y = x[0].reshape(a["shape"])
            elif op == "Squeeze":
                y = x[0].flatten(1)  # [B, C, 1, 1] → [B, C] (the graph's batch-1 squeezes)
            else:  # Unsqueeze: the batch axis is kept throughout
                y = x[0]
            env[out] = y

    def features(self, mel: torch.Tensor) -> torch.Tensor:
        """The pooled 384-d embedding of `mel` [B, 1, 128, frames]."""
        env = {"mel": mel}
        self._run(env, self.steps[: self.split])
        return env[self.pooled].flatten(1)

    def classifier(self, embedding: torch.Tensor) -> torch.Tensor:
        """AudioSet logits [B, 527] from the embedding."""
        env = {self.pooled: embedding[:, :, None, None]}
        self._run(env, self.steps[self.split :])
        return env[self.logits]

    def forward(self, mel: torch.Tensor):
        e = self.features(mel)
        return self.classifier(e), e

    def cut(self, first_trained: int) -> int:
        """Index of the first step in block `features.<first_trained>` or above."""
        return next(i for i, s in enumerate(self.steps)
                    if _block_key(s[4]) >= (first_trained, ""))

    def trunk(self, mel: torch.Tensor, cut: int) -> dict:
        """The tensors of the steps before `cut` (see `cut`), for `from_trunk`."""
        env = {"mel": mel}
        self._run(env, self.steps[:cut])
        return env

    def from_trunk(self, env: dict, cut: int):
        """(logits, embedding) from a `trunk`: the frozen lower blocks are run once
        for the untouched teacher and the student alike."""
        env = dict(env)
        self._run(env, self.steps[cut:])
        return env[self.logits], env[self.pooled].flatten(1)

    def freeze_below(self, first_trained: int) -> list[str]:
        """Freezes every block under `features.<first_trained>`; returns the trained ones."""
        trained = []
        for key, p in self.params.items():
            block = key.rsplit("__", 1)[0]
            k = _block_key(block.replace("_", "."))
            p.requires_grad = k >= (first_trained, "")
            if p.requires_grad and block not in trained:
                trained.append(block)
        return trained


def _block_key(block: str):
    if block.startswith("features."):
        return (int(block.split(".")[1]), "")
    return (100, block)


def check_against_golden(onnx_path: str, golden_dir: str) -> float:
    """Largest difference between this module's probabilities and the golden ones."""
    net = Mn04(onnx_path).eval()
    worst = 0.0
    for name in ("gunshots", "dog"):
        mel = torch.from_numpy(np.load(f"{golden_dir}/{name}_mel.npy"))[None, None]
        want = np.load(f"{golden_dir}/{name}_probs.npy").reshape(-1)
        with torch.no_grad():
            logits, _ = net(mel)
        worst = max(worst, float(np.abs(torch.sigmoid(logits).numpy().reshape(-1) - want).max()))
    return worst
