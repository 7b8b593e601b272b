"""The models a run can train (RunSpec.model), by name.

    cnn       one small CNN per input family (the default, and tecli's only model
              before the registry): conv -> ReLU -> 2x2 max-pool blocks
    cnn-wide  three blocks of 32, 64 and 128 channels (3x3) for every input, with batch
              norm (conv -> BN -> ReLU -> 2x2 max-pool): wider than cnn, and deeper on
              digits, usps and (fashion)mnist; without batch norm it hardly learns
              (digits: chance accuracy for two epochs at lr 0.01)
    resnet18  torchvision's ResNet-18 for small inputs: a 3x3 stride-1 stem, no max-pool

Every model ends in the same fully connected head: -> 120 -> ReLU -> 84 -> ReLU ->
n_classes. Its two hidden layers (LeNet-5's 120 and 84) make sure the method's "last
two fully connected layers" exist, and they are the model's last three Linear layers:
the TE feedback wraps their forward, and reads a layer's input as the previous layer's
output after its ReLU (for the head's first layer: the features, after a ReLU and
pooling).
By default the feedback acts on the class layer, between the 84 hidden units and the
class outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tecli.spec import LINEAR_LAYERS, MODEL_NAMES

Blocks = tuple[tuple[int, int, int], ...]  # conv blocks as (out_channels, kernel, padding)

# cnn: (channels, height, width) -> conv blocks
CONV_BLOCKS: dict[tuple[int, int, int], Blocks] = {
    (1, 8, 8): ((16, 3, 1),),  # digits -> 16 x 4 x 4
    (1, 16, 16): ((16, 5, 2), (32, 3, 1)),  # usps -> 32 x 4 x 4
    (1, 28, 28): ((6, 5, 2), (16, 5, 0)),  # mnist, fashionmnist: LeNet-5 -> 16 x 5 x 5
    (3, 32, 32): ((32, 3, 1), (64, 3, 1), (64, 3, 1)),  # cifar10, svhn -> 64 x 4 x 4
    (3, 96, 96): ((32, 5, 2), (64, 3, 1), (64, 3, 1), (64, 3, 1)),  # stl10 -> 64 x 6 x 6
}
# cnn-wide, for every input: H x W -> 128 x H/8 x W/8 (digits 1 x 1, usps 2 x 2, mnist 3 x 3, cifar10 4 x 4)
WIDE_BLOCKS: Blocks = ((32, 3, 1), (64, 3, 1), (128, 3, 1))
HIDDEN = (120, 84)
assert len(HIDDEN) + 1 == LINEAR_LAYERS  # spec validates --te-layers against this count


def head(width: int, n_classes: int) -> nn.Sequential:
    """width -> 120 -> ReLU -> 84 -> ReLU -> n_classes: the layers the feedback addresses."""
    fc: list[nn.Module] = []
    for hidden in HIDDEN:
        fc += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*fc, nn.Linear(width, n_classes))


class ConvNet(nn.Module):
    """Conv blocks (conv -> [batch norm ->] ReLU -> 2x2 max-pool), flattened, then the head."""

    def __init__(self, blocks: Blocks, input_shape: tuple[int, int, int], n_classes: int, batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        channels, height, width = input_shape
        for out_channels, kernel, padding in blocks:
            conv = nn.Conv2d(channels, out_channels, kernel, padding=padding, bias=not batch_norm)
            layers += [conv, *([nn.BatchNorm2d(out_channels)] if batch_norm else []), nn.ReLU(), nn.MaxPool2d(2)]
            channels = out_channels
            height, width = ((size + 2 * padding - kernel + 1) // 2 for size in (height, width))
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.classifier = head(channels * height * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def resnet18(input_shape: tuple[int, int, int], n_classes: int) -> nn.Module:
    """ResNet-18 whose stem keeps the input's size (a 3x3 stride-1 conv, no max-pool), as
    for CIFAR: ImageNet's 7x7 stride-2 stem and max-pool would shrink 32x32 to 8x8 at
    once. Its fc (after global average pooling: 512 features) is the head."""
    from torchvision.models import resnet18 as torchvision_resnet18  # its import takes ~2 s: only for this model

    model = torchvision_resnet18(weights=None)
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's own convs
    model.maxpool = nn.Identity()
    model.fc = head(model.fc.in_features, n_classes)
    return model


MODELS: dict[str, Callable[[tuple[int, int, int], int], nn.Module]] = {
    "cnn": lambda shape, n_classes: ConvNet(CONV_BLOCKS[shape], shape, n_classes),
    "cnn-wide": lambda shape, n_classes: ConvNet(WIDE_BLOCKS, shape, n_classes, batch_norm=True),
    "resnet18": resnet18,
}
assert tuple(MODELS) == MODEL_NAMES  # spec validates `model` against the names


def build_model(input_shape: tuple[int, int, int], n_classes: int, model: str = "cnn") -> nn.Module:
    """The named model for inputs of input_shape (a list, as checkpoints' model_args hold it, too)."""
    input_shape = tuple(input_shape)
    if input_shape not in CONV_BLOCKS:
        raise ValueError(f"no architecture for input shape {input_shape}")
    return MODELS[model](input_shape, n_classes)


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The model's Linear layers in forward order (the last one is the class layer)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)]
