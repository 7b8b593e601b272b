"""The torch side of TE feedback: capture, sliding window, gradient scaling.

For each chosen Linear layer (weights W: n_out x n_in) a forward hook sees the
layer's input (the previous layer's output after its ReLU: the source neurons)
and its output, taken after its nonlinearity (ReLU for a hidden layer, softmax
for the class layer: the target neurons).  Both are binarized with their
threshold and pushed, one mini-batch per block, into a SlidingPairTE over a
fixed random subset of (source, target) pairs.

Every `refresh` batches the window's TE gives each chosen pair a factor
1 + lam*TE (amplify) or 1 - lam*TE (dampen); all other weights keep 1.  The
train loop calls `after_backward()` between backward and the optimizer step:
with reach "weights" it multiplies W.grad by the factors; with reach "backprop"
the layer's forward is a custom autograd function that also scales the error
sent back through each connection, so earlier layers feel the feedback.

Only the `ceil(window / batch)` batches before each refresh are captured when
the window is shorter than the refresh period; the others cost nothing. On a GPU
the activations are binarized and bit-packed there, and only the packed words
cross to the host (1/32 of the float activations' bytes).
The pair subset comes from the TE side's own numpy generator, so a TE run and
its baseline draw the same torch random numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tecli.models import linear_layers
from tecli.spec import TEConfig
from tecli.te.packing import pack_bits_torch, unpack_bits
from tecli.te.window import SlidingPairTE


class _ScaledLinear(torch.autograd.Function):
    """y = x W^T + b whose backward scales every connection's gradients by F[j, i]."""

    @staticmethod
    def forward(ctx, x, weight, bias, factor):
        ctx.save_for_backward(x, weight, factor)
        return nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, factor = ctx.saved_tensors
        grad_x = grad_out @ (weight * factor)
        grad_w = (grad_out.t() @ x) * factor
        return grad_x, grad_w, grad_out.sum(0), None


def host_block(active: torch.Tensor, packed: bool) -> np.ndarray:
    """(batch, n) bool activations -> the (n, batch) bool block the window takes, on the host.
    packed: pack on the tensor's device and copy only the words (what a GPU does)."""
    if not packed:
        return active.t().cpu().numpy()
    return unpack_bits(pack_bits_torch(active.t()).cpu().numpy(), active.shape[0])


@dataclass
class _Slot:
    """One Linear layer under feedback."""

    layer: nn.Linear
    is_class_layer: bool
    window: SlidingPairTE
    flat_index: torch.Tensor  # flat indices j * n_in + i of the chosen pairs into W
    factor: torch.Tensor  # (n_out, n_in), ones outside the chosen pairs
    te: np.ndarray  # TE of the chosen pairs at the last refresh


class TEFeedback:
    def __init__(self, model: nn.Module, config: TEConfig, batch_size: int, seed: int):
        self.config = config
        self.window_blocks = math.ceil(config.window / batch_size)
        self.seconds = 0.0  # wall time of all TE work so far
        self._batch = 0
        self._capturing = False
        self._refreshed = False
        self.rng = np.random.default_rng(seed)  # the TE side's own generator: draws the pair subset
        rng = self.rng
        linears = linear_layers(model)
        self._slots: list[_Slot] = []
        self._hooks = []
        for index in config.layers:  # validated and canonical (spec.TE_RULES)
            layer = linears[index]
            n_out, n_in = layer.weight.shape
            n_pairs = max(1, round(config.fraction * n_in * n_out))
            flat = np.sort(rng.choice(n_in * n_out, size=n_pairs, replace=False))
            pairs = np.stack([flat % n_in, flat // n_in], axis=1)
            slot = _Slot(
                layer=layer,
                is_class_layer=layer is linears[-1],
                window=SlidingPairTE(n_in, n_out, pairs, self.window_blocks, config.delay),
                flat_index=torch.as_tensor(flat, device=layer.weight.device),
                factor=torch.ones_like(layer.weight, requires_grad=False),
                te=np.zeros(n_pairs),
            )
            self._slots.append(slot)
            self._hooks.append(layer.register_forward_hook(self._capture_hook(slot)))
            if config.reach == "backprop":
                layer.forward = self._scaled_forward(slot)
        self._warm_up(batch_size)

    def _warm_up(self, batch_size: int) -> None:
        """Load the engine's compiled kernels now (~0.4 s once per process), not inside epoch 1.

        A block as long as a real batch (and longer than the delay's history) takes the
        same kernels as training will.
        """
        samples = max(batch_size, self.config.delay + 2)
        for slot in self._slots:
            n_out, n_in = slot.layer.weight.shape
            slot.window.push(np.zeros((n_in, samples), bool), np.zeros((n_out, samples), bool))
            slot.window.te()
            slot.window.reset()

    @staticmethod
    def _scaled_forward(slot: _Slot):
        def forward(x):
            return _ScaledLinear.apply(x, slot.layer.weight, slot.layer.bias, slot.factor)

        return forward

    def _capture_hook(self, slot: _Slot):
        def hook(module, inputs, output):
            if not (module.training and self._capturing):
                return
            start = time.perf_counter()
            out = output.detach()
            if slot.is_class_layer:
                fired = torch.softmax(out, dim=1) > self.config.threshold_out
            else:  # relu(out) > g is out > g for g >= 0, without computing the ReLU again
                fired = (out if self.config.threshold >= 0 else torch.relu(out)) > self.config.threshold
            packed = out.is_cuda
            sources = host_block(inputs[0].detach() > self.config.threshold, packed)
            targets = host_block(fired, packed)
            slot.window.push(sources, targets)
            self.seconds += time.perf_counter() - start

        return hook

    def before_batch(self) -> None:
        """Decide whether this batch falls in the window before the next refresh."""
        position = self._batch % self.config.refresh
        first_captured = self.config.refresh - self.window_blocks
        self._capturing = first_captured <= 0 or position >= first_captured
        if first_captured > 0 and position == first_captured:
            for slot in self._slots:
                slot.window.reset()  # the stretch before this refresh is a new stream

    def after_backward(self) -> None:
        """Refresh factors when due, then scale the chosen weight gradients."""
        start = time.perf_counter()
        self._batch += 1
        if self._batch % self.config.refresh == 0:
            self._refresh()
        if self._refreshed and self.config.reach == "weights":
            for slot in self._slots:
                slot.layer.weight.grad.mul_(slot.factor)
        self.seconds += time.perf_counter() - start

    def _refresh(self) -> None:
        scale = self.config.lam if self.config.mode == "amplify" else -self.config.lam
        for slot in self._slots:
            slot.te = slot.window.te()
            values = torch.from_numpy(slot.te).to(slot.factor.device, slot.factor.dtype).mul_(scale).add_(1.0)
            slot.factor.view(-1).index_copy_(0, slot.flat_index, values)
        self._refreshed = True

    def te_stats(self) -> tuple[float | None, float | None]:
        """Mean and max TE (bits) over the active pairs at the last refresh; None before the first."""
        if not self._refreshed:
            return None, None
        values = np.concatenate([slot.te for slot in self._slots])
        return float(values.mean()), float(values.max())

    def state_dict(self) -> dict:
        """The feedback's state between batches: position in the refresh cycle, capture flag,
        each layer's window, factors and last TE, and the TE side's generator."""
        return {
            "batch": self._batch,
            "capturing": self._capturing,
            "refreshed": self._refreshed,
            "rng": self.rng.bit_generator.state,
            "slots": [
                {"window": slot.window.state_dict(), "factor": slot.factor.detach().cpu().clone(), "te": slot.te.copy()}
                for slot in self._slots
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict taken from feedback with the same configuration and model."""
        if len(state["slots"]) != len(self._slots):
            raise ValueError(f"feedback state has {len(state['slots'])} layers, expected {len(self._slots)}")
        self._batch = int(state["batch"])
        self._capturing = bool(state["capturing"])
        self._refreshed = bool(state["refreshed"])
        self.rng.bit_generator.state = state["rng"]
        for slot, saved in zip(self._slots, state["slots"]):
            slot.window.load_state_dict(saved["window"])
            slot.factor.copy_(saved["factor"])
            slot.te = np.array(saved["te"], np.float64)

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        for slot in self._slots:
            slot.layer.__dict__.pop("forward", None)
