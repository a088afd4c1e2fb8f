"""Everything camkit promises to leave as found: a snapshot of a model's state and
the global RNG, a mixed train/eval model to take one of, and the comparison."""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_state_dict_hooks", "_load_state_dict_pre_hooks")


def mixed(model: nn.Module, eval_child: str) -> nn.Module:
    """``model`` in train mode with ``eval_child`` (and its submodules) in eval mode,
    its first parameter frozen, a ``.grad`` on its last one and a user forward hook."""
    model.train()
    model.get_submodule(eval_child).eval()
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[-1].grad = torch.full_like(params[-1], 0.5)
    model.register_forward_hook(lambda m, i, o: None)
    return model


def _copy(t: torch.Tensor) -> Any:
    if isinstance(t, nn.parameter.UninitializedTensorMixin):
        return "uninitialized"
    return t.detach().clone()


def _identity(t: torch.Tensor) -> Any:
    if isinstance(t, nn.parameter.UninitializedTensorMixin):
        return "uninitialized"
    return (t.data_ptr(), t._version, tuple(t.shape), t.dtype)


def snapshot(model: nn.Module) -> Dict[str, Any]:
    return {
        "training": [(n, m.training) for n, m in model.named_modules()],
        "requires_grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "grad": [(n, None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()],
        # in place writes bump a tensor's version; a new tensor has another address
        "params": [(n, _identity(p)) for n, p in model.named_parameters()],
        "buffers": [(n, _copy(b)) for n, b in model.named_buffers()],
        "types": [(n, type(m)) for n, m in model.named_modules()],
        "hooks": [(n, d, list(getattr(m, d, {}).values())) for n, m in model.named_modules() for d in HOOK_DICTS],
        "rng": torch.get_rng_state(),
    }


def assert_as_found(model: nn.Module, before: Dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"], [
        n for (n, a), (_, b) in zip(after["training"], before["training"]) if a != b][:5]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["types"] == before["types"]
    assert after["hooks"] == before["hooks"]
    for key in ("grad", "params", "buffers"):
        assert [n for n, _ in after[key]] == [n for n, _ in before[key]], key
        for (n, a), (_, b) in zip(after[key], before[key]):
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
                assert torch.equal(a, b), (key, n)
            else:
                assert a == b, (key, n)
    assert torch.equal(after["rng"], before["rng"]), "the global RNG was consumed"
