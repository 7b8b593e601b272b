"""The torch side of observing: a fixed probe set of training samples, forward hooks on
the observed layers, and each epoch's measures (tecli.observe.estimators).

Observed layers, input to output, each after its nonlinearity:
    conv1, conv2, ...  each conv block's output, flattened (cnn, cnn-wide: after ReLU and
                       max-pool; resnet18: each of its four stages); a unit fires when > 0
    fc1, fc2           the hidden Linear layers; a unit fires when its ReLU output is > 0
    class              the class layer as its argmax: the predicted class fires, the others
                       do not (one-hot), so its pattern T is the prediction
TE is measured from each hidden Linear layer to the next Linear layer and to the class
layer (fc1 -> fc2, fc1 -> class, fc2 -> class), with delay 0 as the feedback's default.

Nothing here changes training: the probe indices and the TE pair samples come from a
NumPy generator of their own (seeded with the run's seed), the forward pass runs in
eval mode under torch.no_grad (batch norm's running statistics stay as they are; the
TE feedback captures only in train mode), and the hooks exist only during it.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from tecli.epoch import EpochResult, LayerObservation
from tecli.models import linear_layers
from tecli.observe import estimators

PROBE_BATCH = 256  # samples per forward pass: wide conv layers hold (batch, channels x H x W) outputs
TE_PAIRS = 1024  # (source, target) neuron pairs sampled per connection (every pair when fewer)
TE_DELAY = 0


def feature_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are the model's conv blocks' outputs."""
    if isinstance(getattr(model, "features", None), nn.Sequential):  # tecli.models.ConvNet
        return [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    return [model.layer1, model.layer2, model.layer3, model.layer4]  # torchvision's ResNet


def _binarized(output: torch.Tensor, is_class_layer: bool) -> torch.Tensor:
    if is_class_layer:
        return nn.functional.one_hot(output.argmax(1), output.shape[1]).bool()
    # A conv block's output comes after its ReLU; a Linear layer's before it: relu(x) > 0 is x > 0.
    return output.flatten(1) > 0


class Probe:
    """The probe set of one run and the layers observed on it."""

    def __init__(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, size: int, seed: int):
        rng = np.random.default_rng(seed)  # its own generator: no torch random number is drawn
        index = rng.choice(len(x_train), size=size, replace=False)  # in random order: the TE's series order
        self.model = model
        self.x = x_train[torch.from_numpy(index).to(x_train.device)]
        self.labels = y_train[torch.from_numpy(index).to(y_train.device)].cpu().numpy()
        linears = linear_layers(model)
        self.layers: list[tuple[str, nn.Module]] = [
            *((f"conv{i}", m) for i, m in enumerate(feature_blocks(model), 1)),
            *((f"fc{i}", m) for i, m in enumerate(linears[:-1], 1)),
            ("class", linears[-1]),
        ]
        names = [name for name, _ in self.layers[-len(linears) :]]
        # layer -> (next Linear layer, class layer); each connection's pair sample, drawn in this order
        self.targets = {name: (names[i + 1], names[-1]) for i, name in enumerate(names[:-1])}
        widths = dict(zip(names, (layer.out_features for layer in linears)))
        self.pairs: dict[tuple[str, str], np.ndarray] = {}
        for source, targets in self.targets.items():
            for target in dict.fromkeys(targets):
                self.pairs[source, target] = estimators.sample_pairs(widths[source], widths[target], TE_PAIRS, rng)
        for (source, target), pairs in self.pairs.items():  # load the TE engine's kernels now, not in epoch 1
            estimators.mean_te(np.zeros((size, widths[source]), bool), np.zeros((size, widths[target]), bool), pairs, TE_DELAY)

    def _fired(self) -> dict[str, np.ndarray]:
        """Each observed layer's binarized output on the probe set, (samples, units)."""
        parts: dict[str, list[torch.Tensor]] = {name: [] for name, _ in self.layers}
        last = self.layers[-1][1]

        def keep(name: str, is_class_layer: bool):
            return lambda module, inputs, output: parts[name].append(_binarized(output, is_class_layer))

        handles = [module.register_forward_hook(keep(name, module is last)) for name, module in self.layers]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(self.x), PROBE_BATCH):
                    self.model(self.x[start : start + PROBE_BATCH])
        finally:
            for handle in handles:
                handle.remove()
            self.model.train(was_training)
        return {name: torch.cat(chunks).cpu().numpy() for name, chunks in parts.items()}

    def observe(self, result: EpochResult) -> EpochResult:
        """`result` with the model's measures on the probe set as it is now, and their time."""
        start = time.perf_counter()
        fired = self._fired()
        te = {
            (source, target): estimators.mean_te(fired[source], fired[target], pairs, TE_DELAY)
            for (source, target), pairs in self.pairs.items()
        }
        observed = []
        for position, (name, _) in enumerate(self.layers):
            patterns = estimators.pattern_ids(fired[name])
            following = self.targets.get(name)
            observed.append(
                LayerObservation(
                    layer=name,
                    position=position,
                    neurons=fired[name].shape[1],
                    neuron_entropy=estimators.neuron_entropy(fired[name]),
                    h_t=estimators.entropy(patterns),
                    i_ty=estimators.mutual_information(patterns, self.labels),
                    te_next=te[name, following[0]] if following else None,
                    te_class=te[name, following[1]] if following else None,
                )
            )
        return replace(result, observe_seconds=time.perf_counter() - start, observed=tuple(observed))
