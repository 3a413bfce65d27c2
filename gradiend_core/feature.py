"""The contrasted class pair and every rule that depends on which class is which.

A GRADIEND contrasts two classes ``A = classes[0]`` and ``B = classes[1]`` (docs/method.md §1.2).
Everything that asks "which is the other class?", "what label does this row get?" or "which way
does the feature factor point?" is answered here, once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClassPair:
    """The two contrasted classes, in encoding order: ``a`` encodes to +1, ``b`` to -1."""

    a: str
    b: str

    @classmethod
    def of(cls, classes: list[str] | tuple[str, ...]) -> ClassPair:
        """The pair from a two-element class list (``feature.classes`` or a saved context)."""
        first, second = classes
        return cls(first, second)

    @property
    def classes(self) -> list[str]:
        """``[a, b]``: the order used for labels, tables and plots."""
        return [self.a, self.b]

    def other(self, cls: str) -> str:
        """The class of the pair that is not ``cls``."""
        if cls == self.a:
            return self.b
        if cls == self.b:
            return self.a
        raise KeyError(f"{cls!r} is not one of the classes {self.classes}")

    def direction(self, cls: str) -> int:
        """Fixed encoding direction (never flipped): +1 for ``a``, -1 for ``b``."""
        return 1 if cls == self.a else -1 if self.other(cls) == self.a else 0

    def source_class(self, factual_class: str, source: str) -> str:
        """The class of the token whose gradient the encoder sees (§3): the alternative's class for
        source ``alternative``, the factual class otherwise."""
        return self.other(factual_class) if source == "alternative" else factual_class

    def label(self, factual_class: str, source: str) -> int:
        """Encoder target of a row (§1.2, §3): the direction of its source class.

        For source ``alternative`` this is the factual direction negated: the label describes the
        fed gradient, not the sentence.
        """
        return self.direction(self.source_class(factual_class, source))

    def strengthen_factor(self, cls: str, source: str, target: str = "diff") -> float:
        """Feature factor f whose edit θ + η·dec(f), η > 0, raises P(cls) (§7.2).

        A row encodes to the direction of its source class, and the decoder returns the target
        vector, a plain loss gradient that *raises* the loss of its factual word when added:

        * source ``alternative``: dec(direction(C)) reconstructs the target of rows whose
          alternative is C — with target ``diff`` or ``factual`` that raises the loss of the
          *other* class, so f = +direction(C); with target ``alternative`` it raises the loss of
          C itself, so f = -direction(C);
        * source ``factual``/``diff``: dec(direction(C)) reconstructs the target of C's own rows —
          ``diff``/``factual`` raise the loss of C (f = -direction(C)), ``alternative`` raises the
          other class's loss (f = +direction(C)).
        """
        sign = 1 if source == "alternative" else -1
        if target == "alternative":
            sign = -sign
        return float(sign * self.direction(cls))

    def weaken_factor(self, cls: str, source: str, target: str = "diff") -> float:
        """Feature factor that lowers P(cls): the other class's strengthening factor."""
        return self.strengthen_factor(self.other(cls), source, target)
