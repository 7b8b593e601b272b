"""SGD with momentum and weight decay: torch.optim.SGD's arithmetic without its import cost.

Why not torch.optim.SGD: its first use in a process imports torch._dynamo (about
1.8 s on a 2-core machine, paid by every `tecli run` and every sweep worker), and
its step and zero_grad pass through wrappers (profiler records, dynamo guards) that
cost about 0.3 ms per batch, a few percent of a small model's epoch. This class does
the same operations in the same order with torch's foreach ops (what torch.optim.SGD
itself runs on CUDA; on the CPU they loop over the tensors as its CPU path does), so
the weights are bit-identical to torch.optim.SGD's (tests/test_optim.py), and its
state_dict has torch.optim.SGD's layout: checkpoints written by either load in both.
Dampening, Nesterov and maximize are not offered: tecli's runs do not use them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class SGD:
    """params <- params - lr * buf, buf <- momentum * buf + (grad + weight_decay * params)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        index = [i for i, p in enumerate(self.params) if p.grad is not None]
        params = [self.params[i] for i in index]
        grads = [p.grad for p in params]
        if self.weight_decay != 0:
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
        if self.momentum != 0:
            if all(self.buffers[i] is not None for i in index):
                bufs = [self.buffers[i] for i in index]
                torch._foreach_mul_(bufs, self.momentum)
                torch._foreach_add_(bufs, grads, alpha=1.0)
            else:  # the first step: each buffer starts as its gradient
                bufs = []
                for i, grad in zip(index, grads):
                    if self.buffers[i] is None:
                        self.buffers[i] = grad.detach().clone()
                    else:
                        self.buffers[i].mul_(self.momentum).add_(grad, alpha=1.0)
                    bufs.append(self.buffers[i])
            grads = bufs
        torch._foreach_add_(params, grads, alpha=-self.lr)

    def state_dict(self) -> dict:
        """torch.optim.SGD's layout (one parameter group)."""
        state = {i: {"momentum_buffer": buf} for i, buf in enumerate(self.buffers) if buf is not None}
        group = {
            "lr": self.lr, "momentum": self.momentum, "dampening": 0, "weight_decay": self.weight_decay,
            "nesterov": False, "maximize": False, "foreach": None, "differentiable": False, "fused": None,
            "params": list(range(len(self.params))),
        }  # fmt: skip
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Momentum buffers from a state_dict of this class or of torch.optim.SGD."""
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError("optimizer state does not match the model's parameters")
        buffers: list[torch.Tensor | None] = [None] * len(self.params)
        for position, index in enumerate(groups[0]["params"]):
            buf = state_dict["state"].get(index, {}).get("momentum_buffer")
            if buf is not None:
                param = self.params[position]
                buffers[position] = buf.to(dtype=param.dtype, device=param.device).clone()
        self.buffers = buffers
