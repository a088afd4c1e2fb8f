"""The method registry: each method class declares itself once, with
:func:`register_method` (in the spirit of timm's ``register_model``).

Everything else is derived from it: :data:`METHODS` (name -> class), the
command line's ``--method`` choices (:func:`cli_names`), the presets' default
layers (``MethodInfo.layers``) and the rules for fusion and normalization.

>>> @register_method("mycam", layers="last")
... class MyCAM(GradCAM): ...
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Type, TypeVar

from ..errors import InputError

#: What a method hooks by default (the preset answers with the layer names):
#: ``"last"`` the last feature layer; ``"stages"`` the end of the last three stages (LayerCAM's);
#: ``"cam"`` the layer feeding a GAP + linear head; ``"head"`` a trained camkit head's maps;
#: ``"biases"`` every layer that adds a bias (FullGrad's); ``"input"`` no layer: the method reads the
#: input's gradient (Guided Backprop's).
LAYER_KINDS = ("last", "stages", "cam", "head", "biases", "input")


@dataclass(frozen=True)
class MethodInfo:
    """One registered method.

    Attributes:
        name: the name in :data:`METHODS` and on the command line (``--method NAME``).
        cls: the method class.
        layers: its default layers, one of :data:`LAYER_KINDS`.
        fuses: whether several layers are fused (``fusion=`` / ``weights=`` apply).
        normalize: its default normalizer (a name of :mod:`camkit.normalize`, or ``"head"``:
            the trained head's own).
        cli: whether the command line and ``camkit export`` offer it.
        listed: whether it is in :data:`METHODS`, which method-wide tests and benchmarks loop
            over (False for variants that cost many forwards per channel at their defaults).
    """

    name: str
    cls: type
    layers: str
    fuses: bool
    normalize: Optional[str]
    cli: bool
    listed: bool


_REGISTRY: Dict[str, MethodInfo] = {}
C = TypeVar("C", bound=type)


def register_method(name: str, *, layers: str, fuses: Optional[bool] = None, normalize: Optional[str] = "minmax",
                    cli: bool = True, listed: bool = True) -> Callable[[C], C]:
    """Class decorator: register a method under ``name`` (see :class:`MethodInfo`).

    Args:
        name: lower-case name, unique.
        layers: one of :data:`LAYER_KINDS`.
        fuses: default True for ``"last"`` and ``"stages"`` methods, False otherwise.
        normalize: the default normalizer.
        cli: offered by the command line.
        listed: in :data:`METHODS`.

    Returns:
        The decorator; it sets ``cls.info`` and returns the class unchanged.

    Raises:
        InputError: a name already taken or an unknown layer kind.
    """
    if layers not in LAYER_KINDS:
        raise InputError(f"unknown layer kind {layers!r}; choose one of {', '.join(LAYER_KINDS)}")
    key = name.lower()

    def decorate(cls: C) -> C:
        if key in _REGISTRY and _REGISTRY[key].cls is not cls:
            raise InputError(f"a method named {key!r} is already registered ({_REGISTRY[key].cls.__name__})")
        info = MethodInfo(key, cls, layers, layers in ("last", "stages") if fuses is None else bool(fuses),
                          normalize, bool(cli), bool(listed))
        cls.info = info  # type: ignore[attr-defined]
        _REGISTRY[key] = info
        return cls

    return decorate


def unregister_method(name: str) -> None:
    """Remove a method from the registry (for tests that register a toy one)."""
    _REGISTRY.pop(name.lower(), None)


def method_info(name: str) -> MethodInfo:
    """The registered method called ``name`` (case-insensitive).

    Raises:
        InputError: naming the registered methods.
    """
    info = _REGISTRY.get(str(name).lower())
    if info is None:
        raise InputError(f"unknown method {name!r}; choose from {', '.join(_REGISTRY)}")
    return info


def registered() -> List[MethodInfo]:
    """Every registered method, in registration order."""
    return list(_REGISTRY.values())


def cli_names() -> List[str]:
    """The methods the command line offers, in registration order."""
    return [i.name for i in _REGISTRY.values() if i.cli]


class _Listed(Mapping[str, Type]):
    """A live, read-only view: name -> class of the listed methods."""

    def __getitem__(self, name: str) -> Type:
        info = _REGISTRY[name]
        if not info.listed:
            raise KeyError(name)
        return info.cls

    def __iter__(self) -> Iterator[str]:
        return (n for n, i in _REGISTRY.items() if i.listed)

    def __len__(self) -> int:
        return sum(i.listed for i in _REGISTRY.values())

    def __repr__(self) -> str:
        return f"METHODS({', '.join(self)})"


#: name -> class of every listed method (a live view of the registry).
METHODS: Mapping[str, Type] = _Listed()
