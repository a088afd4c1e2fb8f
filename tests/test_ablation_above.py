"""Ablation-CAM runs only the part of the model above the hooked layer on the ablated copies
(camkit.methods.perturbation.Above, a torch.fx split): the layers below run once, the maps are the
plain definition's (the whole model on the image with channel k zeroed, written out here), an in-place
operation above cannot carry over from one chunk of copies to the next, constants the tracer creates
do not stay on the model, and a model whose holding modules carry hooks of their own keeps them."""
from __future__ import annotations

import torch
from torch import nn

import camkit.methods as cm


def plain_ablation(model: nn.Module, layer: str, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Raw Ablation-CAM maps (B, K, h, w): y, and the whole model per channel with that channel zeroed."""
    mod = dict(model.named_modules())[layer]
    acts = {}
    h = mod.register_forward_hook(lambda m, i, o: acts.setdefault("A", o))
    with torch.no_grad():
        y = model(x).gather(1, classes)
    h.remove()
    A, S = acts["A"], []
    for k in range(A.shape[1]):
        def zero(m, i, o, k=k):
            o = o.clone()
            o[:, k] = 0
            return o
        h = mod.register_forward_hook(zero)
        with torch.no_grad():
            S.append(model(x).gather(1, classes))
        h.remove()
    w = (y[..., None] - torch.stack(S, -1)) / y[..., None]
    return torch.einsum("bkc,bchw->bkhw", w, A).clamp(min=0)


class Net(nn.Module):
    """A stem, a skip from below added above the layer ``b``, a tensor constant made in forward, a pooling
    head. ``inplace``: "below" doubles the tensor from below in place after the layer ran (the split must
    not skip or reorder it), "above" adds the layer's output to it in place (each chunk of copies must
    start from the tensor from below as it was)."""

    def __init__(self, inplace: str = ""):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.b = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)
        self.inplace = inplace

    def forward(self, x):
        s = self.stem(x)
        h = self.b(s)
        if self.inplace == "below":
            s.mul_(2.0)
        if self.inplace == "above":
            z = torch.relu(s.add_(h))
        else:
            z = torch.relu(h + s)
        return self.head((z + torch.tensor(0.5, dtype=x.dtype)).mean((2, 3)))  # the tracer stores the constant


def _data():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    return x, torch.tensor([[0, 2], [1, 0]])


def test_the_layers_below_run_once_and_the_maps_are_the_definitions():
    x, t = _data()
    net = Net().double().eval()
    ours, forwards = _forwards_of_the_stem(net, x, t, batch_size=2)
    ref = plain_ablation(net, "b", x, t)
    # the call's forward (2 images), then one per image for the skip (1 each); 6 channels: 3 chunks per image
    assert forwards == [2, 1, 1], forwards
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)
    assert set(vars(net)) == set(vars(Net().double().eval()))  # no _tensor_constant left on it


def _forwards_of_the_stem(net, x, t, batch_size):
    calls = []
    handle = net.stem[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        maps = cm.AblationCAM(net, layers=["b"], batch_size=batch_size, normalize=None)(x, targets=t).layer_maps["b"]
    finally:
        handle.remove()
    return maps, calls


def test_an_in_place_change_above_does_not_reach_the_next_chunk():
    x, t = _data()
    net = Net(inplace="above").double().eval()
    ours, calls = _forwards_of_the_stem(net, x, t, batch_size=1)  # s.add_(h) broadcasts only for one copy
    assert calls == [2, 1, 1], calls  # the split ran: the tensor from below once per image
    torch.testing.assert_close(ours, plain_ablation(net, "b", x, t), rtol=1e-9, atol=1e-12)


def test_an_in_place_change_below_is_not_skipped():
    x, t = _data()
    net = Net(inplace="below").double().eval()
    ours, calls = _forwards_of_the_stem(net, x, t, batch_size=2)
    assert calls == [2] + [1] * 6, calls  # no split: the hook path, one forward of the image per chunk
    torch.testing.assert_close(ours, plain_ablation(net, "b", x, t), rtol=1e-9, atol=1e-12)


def test_a_hook_on_a_holding_module_is_kept():
    """A hook on the model (it doubles the logits) is part of its function; a graph would lose it."""
    x, t = _data()
    net = Net().double().eval()
    handle = net.register_forward_hook(lambda m, i, o: 2 * o + 1)
    try:
        ours = cm.AblationCAM(net, layers=["b"], batch_size=4, normalize=None)(x, targets=t).layer_maps["b"]
        ref = plain_ablation(net, "b", x, t)
    finally:
        handle.remove()
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


def test_the_kept_graph_follows_a_changed_flag():
    """The traced graph is kept between calls; a flag the forward branches on (``inplace``) changing
    on the model makes the next call trace again (a stale graph would skip the in-place change)."""
    x, t = _data()
    net = Net().double().eval()
    _forwards_of_the_stem(net, x, t, batch_size=2)
    net.inplace = "below"
    ours, calls = _forwards_of_the_stem(net, x, t, batch_size=2)
    assert calls == [2] + [1] * 6, calls
    torch.testing.assert_close(ours, plain_ablation(net, "b", x, t), rtol=1e-9, atol=1e-12)
