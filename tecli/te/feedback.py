"""The torch side of TE feedback: capture, sliding window, gradient scaling.

For each chosen Linear layer (weights W: n_out x n_in) the feedback wraps the
layer's forward (an instance attribute, which `close()` removes), which sees the
layer's input (the previous layer's output after its ReLU: the source neurons)
and its output, taken after its nonlinearity (ReLU for a hidden layer, softmax
for the class layer: the target neurons).  Both are binarized with their
threshold (a number, or one set from the batch: see TEConfig) and pushed, one
mini-batch per block, into a SlidingPairTE over a fixed random subset of
(source, target) pairs.

Every `refresh` batches the window's TE gives each chosen pair a factor
1 + lam*TE (amplify) or 1 - lam*TE (dampen); all other weights keep 1 (with
`permute`, the chosen pairs get the same factors in a random order).  The
train loop calls `after_backward()` between backward and the optimizer step:
with reach "weights" it multiplies W.grad by the factors; with reach "backprop"
the layer's forward is a custom autograd function that also scales the error
sent back through each connection, so earlier layers feel the feedback.

Only the `ceil(window / batch)` batches before each refresh are captured when
the window is shorter than the refresh period; the others cost nothing. On the
CPU, where both thresholds are numbers, the activations go to the window as torch
holds them and its kernel compares, packs and counts in one call
(SlidingPairTE.push_values); other thresholds are binarized by `capture` into the
window's block first. On a GPU the activations are binarized and bit-packed there,
and only the packed words cross to the host (1/32 of the float activations' bytes).
The pair subset (and permute's permutations) comes from the TE side's own numpy
generator, so a TE run and its baseline draw the same torch random numbers.
"""

from __future__ import annotations

import math
import time
import types
from dataclasses import dataclass

import numba as nb
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


def fill_block(block: np.ndarray, active: torch.Tensor, packed: bool) -> None:
    """Write (batch, n) bool activations into the window's (n, batch) uint8 block on the host.
    packed: pack on the tensor's device and copy only the words (what a GPU does)."""
    if packed:
        block[...] = unpack_bits(pack_bits_torch(active.t()).cpu().numpy(), active.shape[0])
    else:
        torch.from_numpy(block).copy_(active.t())


def _fired(values: torch.Tensor, threshold: float | str) -> torch.Tensor:
    """(batch, n) values -> fired: > g, or for "median" > the neuron's median over the
    batch (torch.median: the lower median for an even batch)."""
    if threshold == "median":
        return values > values.median(dim=0).values
    return values > threshold


def capture(block: np.ndarray, values: torch.Tensor, threshold: float | str, class_layer: bool = False) -> None:
    """Binarize (batch, n) values into the window's (n, batch) uint8 block.

    Hidden layers: `values` are ReLU outputs and `threshold` is g or "median". The class
    layer: `values` are logits; a class fires when its softmax probability > g, > 1/classes
    ("uniform"), or when it is the predicted class ("argmax": torch.argmax, the first on
    ties). On the CPU a number threshold compares in NumPy straight into the block (no
    bool tensor, no transposing copy: a third of the time), float32 against float32 as
    torch compares a float32 tensor (the models compute in float32), so the bits are the same.
    """
    if class_layer and threshold == "argmax":
        fired = nn.functional.one_hot(values.argmax(dim=1), values.shape[1]).bool()
        return fill_block(block, fired, packed=values.is_cuda)
    if class_layer:
        values = torch.softmax(values, dim=1)
        threshold = 1 / values.shape[1] if threshold == "uniform" else threshold
    if values.is_cuda or threshold == "median":
        return fill_block(block, _fired(values, threshold), packed=values.is_cuda)
    np.greater(values.numpy().T, np.float32(threshold), out=block.view(np.bool_))


def _number_thresholds(config: TEConfig, class_layer: bool, n_out: int, weight: torch.Tensor) -> tuple[float, float] | None:
    """(g of the sources, g of the targets) of a float32 layer on the CPU whose sources and
    targets both fire above a fixed number, as `capture` binarizes them (the class layer:
    its softmax, "uniform" being 1/classes), so that the window compares the activations
    itself (SlidingPairTE.push_values: one kernel call in place of a comparison and a
    transposing copy per layer, each of which cost 3x its time in isolation once torch
    has run between them); None otherwise."""
    target = config.threshold_out if class_layer else config.threshold
    if target == "uniform":
        target = 1 / n_out
    if isinstance(config.threshold, str) or isinstance(target, str) or weight.is_cuda or weight.dtype != torch.float32:
        return None
    return config.threshold, target


def _rows(values: torch.Tensor) -> np.ndarray:
    """(batch, n) CPU activations as the C-contiguous float32 array push_values reads."""
    return np.ascontiguousarray(values.detach().numpy())


@nb.njit(cache=True)
def _set_factors(te, flat_index, scale, factor, sums):
    """factor[flat_index[p]] = 1 + scale * te[p] in float32, as torch computes it on a
    float32 tensor; adds #pairs, #pairs with TE > 0 and the sum of |factor - 1| to sums[:3],
    and takes the max of |factor - 1| into sums[3] (the diagnostics' running sums)."""
    scale32 = np.float32(scale)
    one = np.float32(1.0)
    positive = 0
    dev_sum = 0.0
    dev_max = sums[3]
    for p in range(te.shape[0]):
        value = np.float32(np.float32(te[p]) * scale32) + one
        factor[flat_index[p]] = value
        positive += te[p] > 0.0
        dev = abs(np.float64(value) - 1.0)
        dev_sum += dev
        dev_max = max(dev_max, dev)
    sums[0] += te.shape[0]
    sums[1] += positive
    sums[2] += dev_sum
    sums[3] = dev_max


@dataclass
class _Slot:
    """One Linear layer under feedback."""

    layer: nn.Linear
    is_class_layer: bool
    window: SlidingPairTE
    flat_index: np.ndarray  # flat indices j * n_in + i of the chosen pairs into W
    factor: torch.Tensor  # (n_out, n_in), ones outside the chosen pairs
    factor_host: np.ndarray  # its values on the host: a view of it on the CPU, else a copy sent at each refresh
    on_device: bool  # the factors are on a GPU (factor_host is sent there)
    te: np.ndarray  # TE of the chosen pairs at the last refresh
    thresholds: tuple[float, float] | None  # (sources', targets') for push_values: see _number_thresholds
    te_read: bool = False  # te already holds this batch's window: read in the push before a refresh


class _Diagnostics:
    """Running sums behind TEFeedback.diagnostics()."""

    def __init__(self):
        self.counted = np.zeros(3, np.int64)  # the windows' counted triples / source ones / target ones so far
        self.sums = np.zeros(4)  # pairs, pairs with TE > 0, sum and max of |factor - 1| over this epoch's refreshes
        self.last = (None, 0.0, 0.0)  # share of TE > 0, mean and max |factor - 1| of the last refresh

    def epoch(self, counted: np.ndarray, slots) -> dict[str, float | None]:
        triples, source_ones, target_ones = counted - self.counted
        self.counted = counted
        pairs, positive, dev_sum, dev_max = self.sums.tolist()
        if pairs:
            self.last = (positive / pairs, dev_sum / pairs, dev_max)
        share, dev_mean, dev_max = self.last
        self.sums[...] = 0.0
        sources = sum(slot.window.n_sources for slot in slots)
        targets = sum(slot.window.n_targets for slot in slots)
        return {
            "source_fire_rate": source_ones / (triples / len(slots) * sources) if triples else None,
            "target_fire_rate": target_ones / (triples / len(slots) * targets) if triples else None,
            "te_positive_share": share,
            "factor_dev_mean": dev_mean,
            "factor_dev_max": dev_max,
        }


class TEFeedback:
    def __init__(self, model: nn.Module, config: TEConfig, batch_size: int, seed: int):
        self.config = config
        self.window_blocks = math.ceil(config.window / batch_size)
        self.seconds = 0.0  # wall time of all TE work so far
        self._batch = 0
        self._capturing = False
        self._refreshed = False
        self._diagnostics = _Diagnostics()
        self.rng = np.random.default_rng(seed)  # the TE side's own generator: the pair subset, permute's permutations
        rng = self.rng
        linears = linear_layers(model)
        self._slots: list[_Slot] = []
        for index in config.layers:  # validated and canonical (spec.TE_RULES)
            layer = linears[index]
            n_out, n_in = layer.weight.shape
            n_pairs = max(1, round(config.fraction * n_in * n_out))
            flat = np.sort(rng.choice(n_in * n_out, size=n_pairs, replace=False))
            pairs = np.stack([flat % n_in, flat // n_in], axis=1)
            factor = torch.ones_like(layer.weight, requires_grad=False)
            on_device = factor.device.type != "cpu"
            slot = _Slot(
                layer=layer,
                is_class_layer=layer is linears[-1],
                # serial: inside training, torch's threads hold the other core (measured: the
                # 10,080-pair window's kernel took 14.2 ms an epoch serial, 17.9 ms parallel)
                window=SlidingPairTE(n_in, n_out, pairs, self.window_blocks, config.delay, parallel=False),
                flat_index=flat.astype(np.int64),
                factor=factor,
                factor_host=np.ones(factor.numel(), np.float32) if on_device else factor.view(-1).numpy(),
                on_device=on_device,
                te=np.zeros(n_pairs),
                thresholds=_number_thresholds(config, layer is linears[-1], n_out, layer.weight),
            )
            self._slots.append(slot)
            layer.forward = self._forward(slot)
        self._scale = config.lam if config.mode == "amplify" else -config.lam
        # what after_backward's one foreach call multiplies: the weights' gradients by the factors
        self._weights = [slot.layer.weight for slot in self._slots] if config.reach == "weights" else []
        self._factors = [slot.factor for slot in self._slots] if config.reach == "weights" else []
        self._warm_up(batch_size)

    def _warm_up(self, batch_size: int) -> None:
        """Load the engine's compiled kernels now (~0.4 s once per process), not inside epoch 1.

        A block as long as a real batch (and longer than the delay's history) takes the
        same kernels as training will.
        """
        samples = max(batch_size, self.config.delay + 2)
        for slot in self._slots:
            window = slot.window
            for read in (None, slot.te):  # a new stream's first block, then one after carried samples, its TE read
                if slot.thresholds is None:
                    window.block(samples)
                    window.push_block(read)
                else:
                    zeros = np.zeros((samples, window.n_sources), np.float32), np.zeros((samples, window.n_targets), np.float32)
                    window.push_values(zeros[0], 0.0, zeros[1], 0.0, read)
            te = slot.window.te()
            _set_factors(te, slot.flat_index, 0.0, np.ones(slot.factor.numel(), np.float32), np.zeros(4))
            slot.window.reset()
            slot.te[...] = 0.0
        self._diagnostics.counted = self._counted()  # the warm-up's samples are no epoch's

    def _forward(self, slot: _Slot):
        """The layer's forward, capturing in train mode inside the window before a refresh;
        with reach "backprop", through _ScaledLinear. A wrapper, not a forward hook: torch's
        hook path cost 4.4 us a call against 0.2 us (a 64 x 120 -> 84 layer, measured alone).
        Bound to the layer, so that a deep copy of the model computes with its own weights
        (and does not capture into this feedback's windows)."""
        scaled = self.config.reach == "backprop"

        def forward(layer: nn.Linear, input: torch.Tensor) -> torch.Tensor:
            if scaled:
                out = _ScaledLinear.apply(input, layer.weight, layer.bias, slot.factor)
            else:
                out = nn.functional.linear(input, layer.weight, layer.bias)
            if self._capturing and layer.training and layer is slot.layer:
                self._capture(slot, input, out)
            return out

        return types.MethodType(forward, slot.layer)

    def _capture(self, slot: _Slot, x: torch.Tensor, output: torch.Tensor) -> None:
        """Push the batch's input and output to the layer's window: as activations with their
        thresholds (push_values), or binarized into its block first (`capture`)."""
        start = time.perf_counter()
        out = output.detach()
        g = self.config.threshold
        due = (self._batch + 1) % self.config.refresh == 0  # after_backward refreshes this batch
        te = slot.te if due else None
        if slot.thresholds is not None:  # numbers, on the CPU: the activations go to the window as they are
            g_src, g_tgt = slot.thresholds
            targets = torch.softmax(out, dim=1) if slot.is_class_layer else out if g_tgt >= 0 else torch.relu(out)
            slot.window.push_values(_rows(x), g_src, _rows(targets), g_tgt, te)
        else:
            sources, targets = slot.window.block(out.shape[0])
            capture(sources, x.detach(), g)
            if slot.is_class_layer:
                capture(targets, out, self.config.threshold_out, class_layer=True)
            else:  # relu(out) > g is out > g for a number g >= 0, without computing the ReLU again
                capture(targets, out if g != "median" and g >= 0 else torch.relu(out), g)
            slot.window.push_block(te)
        slot.te_read = due
        self.seconds += time.perf_counter() - start

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
        if self._refreshed and self._weights:
            torch._foreach_mul_([weight.grad for weight in self._weights], self._factors)
        self.seconds += time.perf_counter() - start

    def _refresh(self) -> None:
        """New factors from the window's TE. With `permute`, pair p's TE goes to the pair at a
        random position (drawn from self.rng, which checkpoints keep): the same factors, in
        the same order for the diagnostics, on shuffled connections."""
        for slot in self._slots:
            if not slot.te_read:
                slot.window.te(out=slot.te)
            slot.te_read = False
            index = slot.flat_index[self.rng.permutation(len(slot.te))] if self.config.permute else slot.flat_index
            _set_factors(slot.te, index, self._scale, slot.factor_host, self._diagnostics.sums)
            if slot.on_device:
                slot.factor.view(-1).copy_(torch.from_numpy(slot.factor_host))
        self._refreshed = True

    def te_stats(self) -> tuple[float | None, float | None]:
        """Mean and max TE (bits) over the active pairs at the last refresh; None before the first."""
        if not self._refreshed:
            return None, None
        values = np.concatenate([slot.te for slot in self._slots])
        return float(values.mean()), float(values.max())

    def diagnostics(self) -> dict[str, float | None]:
        """Did the feedback act since the last call (an epoch)? The fire rates of its source
        and target neurons in the captured samples, the share of active pairs with TE > 0
        at its refreshes, and the mean and max |factor - 1| over the factors they set.
        Without a refresh in the epoch the factors set before still apply: their figures
        are repeated (all ones before the first refresh: 0)."""
        return self._diagnostics.epoch(self._counted(), self._slots)

    def _counted(self) -> np.ndarray:
        return sum((slot.window.counted for slot in self._slots), np.zeros(3, np.int64))

    def state_dict(self) -> dict:
        """The feedback's state between batches: position in the refresh cycle, capture flag,
        each layer's window, factors and last TE, the TE side's generator, and the last
        refresh's diagnostics (an epoch without a refresh repeats them)."""
        return {
            "batch": self._batch,
            "diagnostics_last": self._diagnostics.last,
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
        self._diagnostics.last = tuple(state["diagnostics_last"])
        for slot, saved in zip(self._slots, state["slots"]):
            slot.window.load_state_dict(saved["window"])
            slot.factor.copy_(saved["factor"])
            slot.factor_host[...] = saved["factor"].reshape(-1).numpy()  # (on the CPU, a view of the same)
            slot.te = np.array(saved["te"], np.float64)
            slot.te_read = False

    def close(self) -> None:
        for slot in self._slots:
            slot.layer.__dict__.pop("forward", None)
