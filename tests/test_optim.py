"""tecli's SGD against torch.optim.SGD: the same weights bit for bit, interchangeable state."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from tecli.optim import SGD


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def _steps(model: nn.Module, optimizer, batches) -> None:
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def _batches(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 0.0), (0.9, 5e-4), (0.0, 0.0), (0.0, 1e-3)])
def test_same_weights_as_torch_sgd(momentum, weight_decay):
    ours, theirs = _model(1), _model(1)
    batches = _batches(12)
    _steps(ours, SGD(ours.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay), batches)
    _steps(theirs, torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay), batches)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(next(ours.parameters()), next(_model(1).parameters()))  # it trained


def test_state_dicts_are_interchangeable_with_torch_sgd():
    """Resuming from either optimizer's state continues exactly as the uninterrupted run."""
    batches = _batches(10, seed=3)
    whole = _model(2)
    _steps(whole, torch.optim.SGD(whole.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4), batches)

    for first, second in ((torch.optim.SGD, SGD), (SGD, torch.optim.SGD)):
        model = _model(2)
        optimizer = first(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
        _steps(model, optimizer, batches[:4])
        state = optimizer.state_dict()
        if first is SGD:
            assert state.keys() == torch.optim.SGD(model.parameters(), lr=0.02).state_dict().keys()
        resumed = second(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
        resumed.load_state_dict(state)
        _steps(model, resumed, batches[4:])
        for a, b in zip(model.parameters(), whole.parameters()):
            assert torch.equal(a, b)


def test_state_of_another_model_is_refused():
    state = SGD(_model(0).parameters(), lr=0.1, momentum=0.9).state_dict()
    with pytest.raises(ValueError, match="does not match"):
        SGD([torch.zeros(2, requires_grad=True)], lr=0.1).load_state_dict(state)


def test_training_does_not_import_torch_dynamo():
    """The reason for the class: torch.optim's first use imports torch._dynamo (seconds)."""
    code = (
        "import sys, torch\n"
        "from torch import nn\n"
        "from tecli.optim import SGD\n"
        "model = nn.Linear(3, 2)\n"
        "opt = SGD(model.parameters(), lr=0.1, momentum=0.9)\n"
        "model(torch.ones(4, 3)).sum().backward(); opt.step(); opt.zero_grad()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
