"""Parallel adapters (He et al., 2022), the only trained part of the Miipher-2 feature cleaner.

An adapter sits beside a frozen feed-forward block and adds its output to the block's:
h = FFN(x) + PA(x). It is attached with a forward hook, so the frozen transformers module is
neither replaced nor copied and its state dict keeps its original keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class ParallelAdapter(nn.Module):
    """LayerNorm -> Linear(d, bottleneck) -> GELU -> Linear(bottleneck, d).

    The LayerNorm makes the adapter indifferent to whether the host block normalises its input
    (pre-LN HuBERT, w2v-BERT) or inside itself (Gemma 3n). The output projection starts at zero,
    so an untrained adapter adds exactly nothing and the encoder's features are reproduced.
    """

    def __init__(self, dim: int, bottleneck: int = 1024):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(nn.functional.gelu(self.down(self.norm(x))))


class AdapterBank(nn.Module):
    """One ParallelAdapter per hosted feed-forward module, attached by forward hooks."""

    def __init__(self, hosts: list[nn.Module], dim: int, bottleneck: int = 1024):
        super().__init__()
        self.adapters = nn.ModuleList(ParallelAdapter(dim, bottleneck) for _ in hosts)
        self.enabled = True
        for index, host in enumerate(hosts):
            host.register_forward_hook(_AddAdapterOutput(self, index))

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the frozen encoder alone (e.g. to compute clean targets) without detaching hooks."""
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    def __len__(self) -> int:
        return len(self.adapters)


class _AddAdapterOutput:
    """The forward hook: host output + adapter(host input).

    An object rather than a closure so that copy.deepcopy / pickle of the whole model carry the
    hook over to the copied bank (a closure would keep calling the original's adapters).
    """

    def __init__(self, bank: AdapterBank, index: int):
        self.bank, self.index = bank, index

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not self.bank.enabled:
            return output
        return output + self.bank.adapters[self.index](inputs[0]).to(output.dtype)
