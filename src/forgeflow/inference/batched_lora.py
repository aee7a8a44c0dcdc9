"""Batched LoRA for a batch whose rows use different adapters (the Punica / S-LoRA idea, in plain torch).

PEFT's own mixed-batch forward loops over the batch's adapters in every LoRA layer. Here PEFT's LoRA layers
are switched off (they forward the base layer alone) and a forward hook on each adds every row's LoRA delta
at once: the loaded adapters' weights are stacked per layer, ranks padded with zeros to the largest (exact),
the scaling folded into B, and slot 0 all zeros for rows without an adapter. PEFT still loads and owns the
adapters; the stacks are rebuilt from its modules whenever an adapter loads or goes.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch


class BatchedLora:
    """Per-row LoRA deltas for the LoRA-wrapped linear layers of one PeftModel."""

    def __init__(self, peft_model: Any) -> None:
        from peft.tuners.lora import Linear

        self.peft = peft_model
        self.layers = [m for m in peft_model.modules() if isinstance(m, Linear)]
        self.slots: dict[str, int] = {}  # adapter name -> its slot in every layer's stacks (0: no adapter)
        self.stacks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(layer) -> (A (S, in, R), B (S, R, out))
        self._rows: torch.Tensor | None = None  # the current forward's slot per row
        self._single: str | None = None  # set when every row of the current forward uses this one adapter
        self._hooks = [layer.register_forward_hook(self._add_delta) for layer in self.layers]
        self.rebuild()

    def rebuild(self) -> None:
        """Stack the loaded adapters' weights afresh (after a load or a delete), and keep PEFT's own LoRA
        path off so that the hooks alone add the deltas."""
        names = list(self.peft.peft_config)
        self.slots = {name: i + 1 for i, name in enumerate(names)}
        self.stacks.clear()
        for layer in self.layers:
            layer.enable_adapters(False)
            present = [n for n in names if n in layer.lora_A]
            if not present:
                continue
            weight = layer.lora_A[present[0]].weight
            rank = max(layer.lora_A[n].weight.shape[0] for n in present)
            a = torch.zeros(len(names) + 1, layer.in_features, rank, dtype=weight.dtype, device=weight.device)
            b = torch.zeros(len(names) + 1, rank, layer.out_features, dtype=weight.dtype, device=weight.device)
            with torch.no_grad():
                for n in present:
                    r = layer.lora_A[n].weight.shape[0]
                    a[self.slots[n], :, :r] = layer.lora_A[n].weight.T
                    b[self.slots[n], :r, :] = layer.lora_B[n].weight.T * layer.scaling[n]
            self.stacks[id(layer)] = (a, b)

    @contextmanager
    def rows(self, adapters: list[str | None], device: Any) -> Iterator[None]:
        """Within it, a forward of the model gives row i the delta of `adapters[i]` (None: none)."""
        unique = set(adapters)
        if unique == {None}:
            self._rows, self._single = None, None
        elif len(unique) == 1:
            self._rows, self._single = None, adapters[0]
        else:
            self._rows = torch.tensor([self.slots[a] if a else 0 for a in adapters], device=device)
            self._single = None
        try:
            yield
        finally:
            self._rows, self._single = None, None

    def _add_delta(self, layer: Any, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        stacks = self.stacks.get(id(layer))
        if stacks is None or (self._rows is None and self._single is None):
            return None
        a, b = stacks
        x = args[0].to(a.dtype)
        if self._single is not None:  # one adapter for every row: two plain matmuls with its slot
            slot = self.slots[self._single]
            return output + torch.matmul(torch.matmul(x, a[slot]), b[slot]).to(output.dtype)
        h = torch.bmm(x, a.index_select(0, self._rows))
        return output + torch.bmm(h, b.index_select(0, self._rows)).to(output.dtype)

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        for layer in self.layers:
            layer.enable_adapters(True)
