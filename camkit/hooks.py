"""Forward hooks on named layers: resolve names, capture outputs, remove cleanly.

The only stateful part of camkit. :class:`ActivationRecorder` attaches forward
hooks to a set of layers (as a context manager) and, while recording, keeps
each layer's output exactly as the layer returned it: downstream layers get a
copy, so an in-place op further on (VGG16's ``ReLU(inplace=True)``) cannot
overwrite what was captured. Outside a recording the hooks do nothing.
"""
from __future__ import annotations

import copy
import difflib
import itertools
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .errors import InputError, InputTypeError

LayerSpec = Union[str, nn.Module]

# --------------------------------------------------------------------------- the model's state

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock camkit holds on ``model`` while it runs it.

    Every camkit entry point that changes a model's state for a while (mode
    flags, hooks that record) holds it, so two threads explaining one model
    take turns instead of interleaving their save / restore.

    Args:
        model (nn.Module): The model.

    Returns:
        *threading.RLock*: The same lock for the same model, as long as it lives.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextmanager
def eval_mode(model: nn.Module, modules: Optional[Sequence[nn.Module]] = None) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode, every module's own ``training`` flag restored
    exactly afterwards (also on error), under :func:`model_lock`.

    The one save / restore of mode flags in camkit: methods, metrics, presets
    and dry runs all use it. Flags are set directly, so a ``train()`` override
    with side effects is not called.

    Args:
        model (nn.Module): The model.
        modules (sequence of nn.Module, optional): ``list(model.modules())`` where the caller has
            listed them already (one traversal of a large model serves both). Default: listed here.

    Returns:
        *context manager*: Yields ``model``.
    """
    with model_lock(model):
        flags = [(m, m.training) for m in (model.modules() if modules is None else modules)]
        try:
            for m, flag in flags:
                if flag:  # nn.Module.__setattr__ costs microseconds a module: an eval model pays nothing
                    m.training = False
            yield model
        finally:
            for m, flag in flags:
                if m.training != flag:
                    m.training = flag


def _first_float(model: nn.Module) -> Optional[Tensor]:
    """The first floating-point parameter, else buffer, of ``model``."""
    return next((t for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point()), None)


def input_channels(model: nn.Module) -> int:
    """The channels the model's stem takes, read from its modules (no forward).

    Args:
        model (nn.Module): The model.

    Returns:
        *int*: timm's ``in_chans``, else the first registered non-lazy
        ``Conv2d``'s ``in_channels``, else 3.
    """
    in_chans = getattr(model, "in_chans", None)
    if isinstance(in_chans, int) and in_chans > 0:
        return in_chans
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and not isinstance(m, nn.modules.lazy.LazyModuleMixin):
            return int(m.in_channels)
    return 3


class _StemFound(Exception):
    def __init__(self, channels: int) -> None:
        self.channels = channels


def stem_channels(model: nn.Module, x: Tensor) -> int:
    """``in_channels`` of the first ``Conv2d`` that runs on ``x``: the channels the model takes.

    A forward pre-hook on every ``Conv2d`` stops the dry run before the first
    one computes, so the order in which modules were registered does not
    matter. A lazy stem (channels not known yet) counts as 3; where no
    ``Conv2d`` runs first, or the run fails before one, :func:`input_channels`.

    Args:
        model (nn.Module): The model.
        x (Tensor): An input it accepts, ``(1, C, H, W)``.

    Returns:
        *int*: The stem's channels.
    """
    def stop(m: nn.Module, args: Tuple[Any, ...]) -> None:
        raise _StemFound(int(m.in_channels) or 3)

    handles = [m.register_forward_pre_hook(stop, prepend=True) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        dry_run(model, x, names=[])
    except _StemFound as found:
        return found.channels
    except Exception:  # something before the stem needs other input: trust the registered order
        pass
    finally:
        for h in handles:
            h.remove()
    return input_channels(model)


def dry_run_input(model: nn.Module, size: Sequence[int] = (224, 224), batch: int = 1, seed: int = 0) -> Tensor:
    """A random input on the model's device and in its dtype, drawn from a
    private generator (the global RNG is not consumed).

    Args:
        model (nn.Module): The model.
        size (sequence of int, optional): ``(H, W)``. Default: ``(224, 224)``.
        batch (int, optional): ``B``. Default: 1.
        seed (int, optional): The generator's seed. Default: 0.

    Returns:
        *Tensor*: ``(B, C, H, W)``, C the stem's channels (:func:`stem_channels`);
        the dtype of the model's first floating-point parameter or buffer
        (float32 without one).

    Raises:
        InputError: ``size`` is not two positive integers.
    """
    if len(size) != 2 or any(int(s) < 1 for s in size):
        raise InputError(f"the input size must be two positive integers (H, W), got {tuple(size)}")
    ref = _first_float(model)
    dtype = ref.dtype if ref is not None else torch.float32
    device = ref.device if ref is not None else torch.device("cpu")

    def draw(channels: int) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch, channels, int(size[0]), int(size[1]), generator=g).to(device=device, dtype=dtype)

    x = draw(input_channels(model))
    c = stem_channels(model, x[:1])
    return x if c == x.shape[1] else draw(c)


def _uninitialized(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params()
               for m in model.modules())


@contextmanager
def dry_model(model: nn.Module) -> Iterator[nn.Module]:
    """The model to dry-run: ``model`` itself, or a deep copy when lazy modules are
    not initialized yet (a forward would create their parameters and draw from
    the global RNG), initialized under a forked RNG. Names and structure are the same.

    Args:
        model (nn.Module): The model.

    Returns:
        *context manager*: Yields ``model`` or its copy.
    """
    if not _uninitialized(model):
        yield model
        return
    cuda = sorted({t.device.index or 0 for t in model.parameters() if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        yield copy.deepcopy(model)


def dry_run(
    model: nn.Module,
    x: Optional[Tensor] = None,
    *,
    size: Sequence[int] = (224, 224),
    batch: int = 1,
    names: Optional[Sequence[str]] = None,
    keep: Callable[[str, Tensor], Any] = lambda name, out: out,
    run: Optional[Callable[[Tensor], Any]] = None,
) -> Tuple[Dict[str, Any], Any]:
    """One forward pass to learn about a model, leaving it exactly as found.

    Runs ``run(x)`` (default ``model(x)``) under ``no_grad`` and
    :func:`eval_mode` on ``x`` (default: :func:`dry_run_input`). Returns
    ``(kept, output)``: for each named module (``names``; default all) that
    returned a tensor, ``keep(name, output)`` of its first call, in the order
    the modules finished.

    Args:
        model (nn.Module): The model.
        x (Tensor, optional): The input; default :func:`dry_run_input` of
            ``size`` and ``batch``.
        size (sequence of int, optional): ``(H, W)`` of the default input.
        batch (int, optional): ``B`` of the default input. Default: 1.
        names (sequence of str, optional): The modules to watch (dotted
            names); default all but the root.
        keep (callable, optional): ``(name, detached output) -> kept value``;
            default the output itself.
        run (callable, optional): What to run on ``x``; default ``model``.

    Returns:
        *tuple*: ``(kept, output)``: a dict ``name -> kept value`` and what
        ``run(x)`` returned.

    Raises:
        KeyError: A name in ``names`` is not a module of ``model``.
    """
    mods = dict(model.named_modules())
    chosen = [n for n in mods if n] if names is None else list(names)
    kept: Dict[str, Any] = {}

    def hook_for(name: str):
        def hook(m: nn.Module, i: object, o: object) -> None:
            if isinstance(o, Tensor) and name not in kept:
                kept[name] = keep(name, o.detach())
        return hook

    if x is None:
        x = dry_run_input(model, size, batch)
    handles = [mods[n].register_forward_hook(hook_for(n)) for n in chosen]
    try:
        with torch.no_grad(), eval_mode(model):
            out = (run or model)(x)
    finally:
        for h in handles:
            h.remove()
    return kept, out


def layer_names(model: nn.Module) -> List[str]:
    """Dotted names of every submodule.

    Args:
        model (nn.Module): The model.

    Returns:
        *list of str*: In ``model.named_modules()`` order, the root excluded.
    """
    return [name for name, _ in model.named_modules() if name]


def resolve_layers(model: nn.Module, layers: Union[LayerSpec, Sequence[LayerSpec]]) -> List[Tuple[str, nn.Module]]:
    """Turn dotted names or module objects into ``(name, module)`` pairs.

    Args:
        model (nn.Module): The model.
        layers (str, nn.Module or a sequence of them): The layers, by dotted
            name or as submodules of ``model``.

    Returns:
        *list of tuple*: ``(name, module)`` per layer, in the given order.

    Raises:
        InputError: ``layers`` is None or empty, an unknown name (the message
            lists close matches), a module that is not a submodule of
            ``model`` (or is ``model`` itself), another type, or a repeated layer.
    """
    if layers is None:
        raise InputError("layers is required: name at least one layer, e.g. layers=['features.29'] "
                         "(camkit.adapters.resolve(model) gives defaults; `camkit layers` lists them)")
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    try:
        layers = list(layers)
    except TypeError:
        raise InputTypeError(f"layers must be a name, a module or a list of them, got {type(layers).__name__}") from None
    if not layers:
        raise InputError("layers is empty: name at least one layer, e.g. layers=['features.29']")
    modules = dict(model.named_modules())
    by_id = {id(m): n for n, m in model.named_modules()}
    out: List[Tuple[str, nn.Module]] = []
    for spec in layers:
        if isinstance(spec, nn.Module):
            if id(spec) not in by_id:
                raise InputError(f"the module {type(spec).__name__} passed in layers is not a submodule of the model")
            name = by_id[id(spec)]
            if name == "":
                raise InputError("layers must name submodules, not the model itself")
        elif isinstance(spec, str):
            name = spec
            if name not in modules or name == "":
                close = difflib.get_close_matches(name, layer_names(model), n=5, cutoff=0.5)
                hint = f"; close matches: {', '.join(close)}" if close else ""
                raise InputError(f"unknown layer {name!r}{hint} (see model.named_modules() or `camkit layers`)")
        else:
            raise InputTypeError(f"layers must be names (str) or modules, got {type(spec).__name__}")
        if any(name == n for n, _ in out):
            raise InputError(f"layer {name!r} is listed twice")
        out.append((name, modules[name]))
    return out


class ActivationRecorder:
    """Forward hooks on ``layers`` of ``model``; a context manager.

    While :meth:`recording` is active, ``activations[name]`` holds each layer's
    output tensor. With ``make_differentiable=True`` (and grad mode on) an
    output that carries no autograd history (frozen weights, plain input) is
    replaced by a leaf that requires grad, so gradients can be taken with
    respect to it without touching any parameter's ``requires_grad``.

    With ``grad_from_first_layer=True`` as well, the forward can run under
    ``torch.no_grad()``: the first hooked layer to finish turns grad mode on
    (the enclosing ``no_grad`` block turns it back off when it exits), so no
    autograd graph is recorded for anything computed before it. Gradients
    with respect to the hooked outputs are unchanged (nothing computed before
    a layer ran can depend on its output), but the forward saves no tensors
    for the part of the model below the hooked layers.

    Args:
        model (nn.Module): The model.
        layers (sequence of tuple): ``(name, module)`` pairs, as from
            :func:`resolve_layers`.
        make_differentiable (bool, optional): Default: False.
        grad_from_first_layer (bool, optional): Default: False.

    Raises:
        InputError: During a recording, a hooked layer returned something
            other than a tensor.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[Tuple[str, nn.Module]],
        make_differentiable: bool = False,
        grad_from_first_layer: bool = False,
    ) -> None:
        self.model = model
        self.layers = list(layers)
        self.make_differentiable = make_differentiable
        self.grad_from_first_layer = grad_from_first_layer
        self.activations: Dict[str, Tensor] = {}
        self._calls: Dict[str, int] = {}
        self._handles: List[torch.utils.hooks.RemovableHandle] = []
        self._recording = False
        self._thread: Optional[int] = None  # only the recording thread's forward is captured

    @property
    def attached(self) -> bool:
        """Whether the hooks are attached."""
        return bool(self._handles)

    def attach(self) -> ActivationRecorder:
        """Attach the hooks (once); returns ``self``."""
        if not self._handles:
            self._handles = [m.register_forward_hook(self._hook_for(name)) for name, m in self.layers]
        return self

    def detach(self) -> None:
        """Remove the hooks and drop the activations."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.activations = {}

    def __enter__(self) -> ActivationRecorder:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _hook_for(self, name: str):
        def hook(module: nn.Module, inputs: object, output: object):
            if not self._recording or threading.get_ident() != self._thread:
                return None
            if not isinstance(output, Tensor):
                raise InputError(
                    f"layer {name!r} returned {type(output).__name__}, not a tensor; hook a layer that returns one"
                )
            self._calls[name] = self._calls.get(name, 0) + 1
            if self.grad_from_first_layer and not torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
                torch.set_grad_enabled(True)  # record the graph from here on only
            if self.make_differentiable and torch.is_grad_enabled() and not output.requires_grad:
                output = output.detach().requires_grad_(True)
            self.activations[name] = output
            # Downstream gets a copy: an in-place op later on must not change
            # what was captured (nor, for gradient methods, its grad_fn).
            return output.clone()

        return hook

    @contextmanager
    def recording(self) -> Iterator[Dict[str, Tensor]]:
        """Capture during the block (attaching the hooks for it if needed); references
        are dropped when it ends.

        Returns:
            *context manager*: Yields ``activations``, a dict ``name -> Tensor``
            filled as the layers run (in the recording thread only).
        """
        attach_for_block = not self.attached
        if attach_for_block:
            self.attach()
        self.activations, self._calls, self._recording = {}, {}, True
        self._thread = threading.get_ident()
        try:
            yield self.activations
        finally:
            self._recording, self._thread = False, None
            self.activations, self._calls = {}, {}
            if attach_for_block:
                self.detach()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Inside a recording: extra forward passes (e.g. of perturbed inputs) are not captured."""
        was = self._recording
        self._recording = False
        try:
            yield
        finally:
            self._recording = was

    def check_complete(self) -> None:
        """After a forward: every layer ran exactly once.

        Raises:
            InputError: A layer did not run, or ran more than once.
        """
        missing = [n for n, _ in self.layers if n not in self.activations]
        if missing:
            raise InputError(f"layer(s) {missing} did not run during the forward pass; choose layers the model uses")
        repeated = {n: c for n, c in self._calls.items() if c > 1}
        if repeated:
            n, c = next(iter(repeated.items()))
            raise InputError(
                f"layer {n!r} ran {c} times in one forward pass (a shared module); "
                "hook a module that runs once, e.g. its parent block"
            )
