"""A gradient row held as consecutive pieces instead of one flat vector (no copy).

A training step that computes its base-model gradients on the fly gets them from autograd as one
tensor per θ tensor; ``Gradiend.fused_update`` reads such pieces where they lie, so the n-sized copy
into one flat vector is never made. Its own module so that the gradient and the
GRADIEND code share it without depending on each other.
"""

from __future__ import annotations


class Segments(tuple):
    """One gradient row held as consecutive 1-D pieces (θ's tensors in ``ParamSpace`` order, e.g.
    ``GradientComputer.vectors(..., flat=False)``) instead of one flat vector of n coordinates.

    ``Gradiend.fused_update`` reads the pieces in place, so no n-sized copy is made; its chunks
    then also end where a piece ends (which changes only float rounding)."""

    def offsets(self) -> list[int]:
        """Where each piece starts in the row, then the row's length."""
        out = [0]
        for piece in self:
            out.append(out[-1] + piece.numel())
        return out
