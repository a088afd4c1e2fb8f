"""Layer-output layouts and the dry-run questions every family's preset asks, below the family modules
(``presets``, ``transformers_hf``, ``autolayer``) so that each can use them without an import circle.

* :class:`TokenReshape`: transformer tokens ``(B, N, C)`` -> maps ``(B, C, h, w)`` on one patch grid;
  :class:`TokenGrids`: the same for a model whose layers sit on several grids (Swin's stages).
* :func:`nhwc_to_nchw`: channels-last maps ``(B, H, W, C)`` -> ``(B, C, H, W)``.
* :func:`stage_ends`: the end of each of the coarsest resolutions from one dry run's outputs.
* :func:`gap_linear`: does ``fc(GAP(A))`` give the logits (CAM applies)?
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

from torch import Tensor, nn

from camkit.errors import InputError
from camkit.methods import gap_linear_mismatch

Reshape = Callable[[Tensor], Tensor]


class TokenReshape:
    """Turn transformer tokens ``(B, N, C)`` into maps ``(B, C, h, w)``.

    The first ``num_prefix_tokens`` tokens (class, distillation, register) are
    dropped; the remaining ``h * w`` patch tokens are laid out row by row on the
    patch grid ``grid`` (timm's ``patch_embed.grid_size``). When the number of
    patch tokens does not match ``grid`` (another input size) a square grid is
    used if the count is a perfect square. 4-D inputs pass through unchanged.
    """

    def __init__(self, num_prefix_tokens: int, grid: Tuple[int, int]) -> None:
        if num_prefix_tokens < 0:
            raise InputError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.grid = (int(grid[0]), int(grid[1]))

    def __call__(self, t: Tensor) -> Tensor:
        if t.dim() == 4:
            return t
        if t.dim() != 3:
            raise InputError(f"expected tokens of shape (B, N, C), got {tuple(t.shape)}")
        patches = t[:, self.num_prefix_tokens:, :]
        h, w = _grid_for(patches.shape[1], (self.grid,), t.shape[1], self.num_prefix_tokens)
        return patches.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)

    def __repr__(self) -> str:
        return f"TokenReshape(num_prefix_tokens={self.num_prefix_tokens}, grid={self.grid})"


class TokenGrids:
    """Tokens ``(B, N, C)`` -> maps ``(B, C, h, w)`` for layers on several patch grids (one per stage).

    After dropping ``num_prefix_tokens``, the ``n`` patch tokens are laid out row by row on the grid of
    ``grids`` with ``h * w = n`` (a dry run at the model's nominal input size names them); another
    input size falls back to a square grid when ``n`` is a perfect square. 4-D inputs pass through.
    """

    def __init__(self, num_prefix_tokens: int, grids: Sequence[Tuple[int, int]]) -> None:
        if num_prefix_tokens < 0:
            raise InputError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.grids = tuple((int(g[0]), int(g[1])) for g in grids)

    def __call__(self, t: Tensor) -> Tensor:
        if t.dim() == 4:
            return t
        if t.dim() != 3:
            raise InputError(f"expected tokens of shape (B, N, C), got {tuple(t.shape)}")
        patches = t[:, self.num_prefix_tokens:, :]
        h, w = _grid_for(patches.shape[1], self.grids, t.shape[1], self.num_prefix_tokens)
        return patches.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)

    def __repr__(self) -> str:
        return f"TokenGrids(num_prefix_tokens={self.num_prefix_tokens}, grids={self.grids})"


def _grid_for(n: int, grids: Sequence[Tuple[int, int]], tokens: int, prefix: int) -> Tuple[int, int]:
    """The grid of ``grids`` with ``n`` cells, else the square one, else an InputError naming the counts."""
    for h, w in grids:
        if h * w == n:
            return h, w
    side = int(round(n ** 0.5))
    if side * side == n and n > 0:
        return side, side
    fit = " or ".join(f"{h}x{w}" for h, w in grids)
    raise InputError(f"{tokens} tokens minus {prefix} prefix tokens = {n} patch tokens, which fit neither the "
                     f"patch grid {fit} nor a square grid")


def nhwc_to_nchw(t: Tensor) -> Tensor:
    """Channels-last feature maps ``(B, H, W, C)`` (timm's Swin stages) as ``(B, C, H, W)``."""
    if t.dim() != 4:
        raise InputError(f"expected channels-last maps (B, H, W, C), got {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2)


def stage_ends(kept: Mapping[str, Tensor], names: Sequence[str], count: int = 3) -> Tuple[str, ...]:
    """The last of ``names`` (a Sequential's children, in order) at each of the ``count``
    coarsest output resolutions, from a dry run's outputs ``kept``."""
    ends: List[Tuple[str, Tuple[int, int]]] = []
    for name in names:
        out = kept.get(name)
        if out is None or out.dim() != 4:
            break
        hw = (int(out.shape[-2]), int(out.shape[-1]))
        if ends and ends[-1][1] == hw:
            ends[-1] = (name, hw)
        else:
            ends.append((name, hw))
    return tuple(n for n, _ in ends[-count:])


def gap_linear(features: Tensor, logits: Any, fc: nn.Module, reshape: Optional[Reshape] = None) -> bool:
    """Does ``fc(GAP(reshape(features)))`` give ``logits``? (``camkit.methods.gap_linear_mismatch``)"""
    if not isinstance(logits, Tensor):
        return False
    if reshape is not None:
        features = reshape(features)
    return not bool(gap_linear_mismatch(features, logits, fc))
