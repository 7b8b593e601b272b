"""One small CNN per input family.

Every network is: convolutional blocks (conv -> ReLU -> 2x2 max-pool), then the
fully connected stack  flatten -> 120 -> ReLU -> 84 -> ReLU -> n_classes.
The two hidden fully connected layers (LeNet-5's 120 and 84) make sure the
method's "last two fully connected layers" exist: by default TE feedback acts on
the class layer, between the 84 hidden units and the class outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from tecli.spec import LINEAR_LAYERS

# (channels, height, width) -> conv blocks as (out_channels, kernel, padding)
CONV_BLOCKS: dict[tuple[int, int, int], tuple[tuple[int, int, int], ...]] = {
    (1, 8, 8): ((16, 3, 1),),  # digits -> 16 x 4 x 4
    (1, 16, 16): ((16, 5, 2), (32, 3, 1)),  # usps -> 32 x 4 x 4
    (1, 28, 28): ((6, 5, 2), (16, 5, 0)),  # mnist, fashionmnist: LeNet-5 -> 16 x 5 x 5
    (3, 32, 32): ((32, 3, 1), (64, 3, 1), (64, 3, 1)),  # cifar10, svhn -> 64 x 4 x 4
    (3, 96, 96): ((32, 5, 2), (64, 3, 1), (64, 3, 1), (64, 3, 1)),  # stl10 -> 64 x 6 x 6
}
HIDDEN = (120, 84)
assert len(HIDDEN) + 1 == LINEAR_LAYERS  # spec validates --te-layers against this count


class ConvNet(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], n_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        channels = input_shape[0]
        for out_channels, kernel, padding in CONV_BLOCKS[input_shape]:
            layers += [nn.Conv2d(channels, out_channels, kernel, padding=padding), nn.ReLU(), nn.MaxPool2d(2)]
            channels = out_channels
        self.features = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            width = self.features(torch.zeros(1, *input_shape)).shape[1]
        fc: list[nn.Module] = []
        for hidden in HIDDEN:
            fc += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.classifier = nn.Sequential(*fc, nn.Linear(width, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_model(input_shape: tuple[int, int, int], n_classes: int) -> ConvNet:
    if input_shape not in CONV_BLOCKS:
        raise ValueError(f"no architecture for input shape {input_shape}")
    return ConvNet(input_shape, n_classes)


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The model's Linear layers in forward order (the last one is the class layer)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)]
