"""The contrasted class pair, the other classes, and every rule that depends on which is which.

A feature has two or more classes (``feature.classes``); a GRADIEND contrasts two of them,
``A = pair[0]`` and ``B = pair[1]`` (each entry ``"a-b"`` of ``feature.pairs`` is one GRADIEND;
docs/method.md §1.1-§1.3). Every other class can contribute *identity rows* (alternative =
factual, label 0). Everything that asks "which is the other class?", "what label does this row
get?" or "which way does the feature factor point?" is answered here, once.
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
        """The pair from a two-element class list (a saved context, or ``"a-b".split("-")``)."""
        first, second = classes
        return cls(first, second)

    @classmethod
    def of_feature(cls, feature) -> ClassPair:
        """The pair a GRADIEND contrasts: the first of ``feature.pairs`` (``"a-b"``; a pair's
        stages see a feature whose ``pairs`` is just their own, see ``feature_for_pair``), or the
        first two of ``feature.classes`` for a feature object without ``pairs``."""
        pairs = getattr(feature, "pairs", None)
        return cls.of(pairs[0].split("-") if pairs else feature.classes[:2])

    @property
    def name(self) -> str:
        """``"a-b"``: the pair's name in ``feature.pairs``, stage names and output folders."""
        return f"{self.a}-{self.b}"

    def __contains__(self, cls: object) -> bool:
        return cls == self.a or cls == self.b

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
        """Fixed encoding direction (never flipped): +1 for ``a``, -1 for ``b``, and 0 for a class
        outside the pair (an identity class, §1.3)."""
        return 1 if cls == self.a else -1 if cls == self.b else 0

    def source_class(self, factual_class: str, source: str) -> str:
        """The class of the token whose gradient the encoder sees (§3): the alternative's class for
        source ``alternative``, the factual class otherwise. A class outside the pair is its own
        source class whatever the source, since its identity rows have alternative = factual."""
        if source == "alternative" and factual_class in self:
            return self.other(factual_class)
        return factual_class

    def label(self, factual_class: str, source: str) -> int:
        """Encoder target of a row (§1.2, §3): the direction of its source class.

        For source ``alternative`` this is the factual direction negated: the label describes the
        fed gradient, not the sentence. Rows of a class outside the pair are labelled 0.
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
        self.other(cls)  # a class outside the pair has no factor: KeyError
        sign = 1 if source == "alternative" else -1
        if target == "alternative":
            sign = -sign
        return float(sign * self.direction(cls))

    def weaken_factor(self, cls: str, source: str, target: str = "diff") -> float:
        """Feature factor that lowers P(cls): the other class's strengthening factor."""
        return self.strengthen_factor(self.other(cls), source, target)


def other_classes(feature) -> list[str]:
    """The classes of ``feature.classes`` outside the contrasted pair, in their listed order."""
    pair = ClassPair.of_feature(feature)
    return [c for c in feature.classes if c not in pair]


def identity_classes(feature) -> list[str]:
    """The classes whose rows train and evaluate as identity rows (§1.3): every class outside the
    pair when ``feature.identity_for_other_classes`` is on, none otherwise."""
    return other_classes(feature) if getattr(feature, "identity_for_other_classes", False) else []


def alternative_class(pair: ClassPair, cls: str) -> str:
    """The class of a row's alternative: the other pair class, or ``cls`` itself for a class
    outside the pair (an identity row, §1.3)."""
    return pair.other(cls) if cls in pair else cls


def apply_casing(word: str, like: str) -> str:
    """Give ``word`` the casing pattern of ``like`` (lower, UPPER or Title; otherwise unchanged)."""
    if like.islower():
        return word.lower()
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:].lower()
    return word


def alternative_word(
    targets: dict[str, list[str]],
    pair: ClassPair,
    cls: str,
    word: str,
    position: int | None = None,
) -> str:
    """The counterfactual of ``word``, a target word of class ``cls`` in any casing (§1.1).

    Words pair by position: the alternative of the i-th word of a pair class is the i-th word of
    the other pair class (the loader checks that both lists are equally long), in the casing of
    ``word``. A word listed twice takes its first position, so with ``she: [she, her, her]`` and
    ``he: [he, him, his]`` the alternative of *her* is *him* and that of *His* is *Her*, unless
    ``position`` names the list position the word was matched at (``feature.filters`` tell the two
    *her* apart: position 2, the possessive, gives *his*). With one word per class this is the
    other class's word, as before N-class features. A class outside the pair is its own
    alternative (an identity row), so ``word`` itself is returned.
    """
    if cls not in pair:
        return word
    if position is None:
        position = [w.lower() for w in targets[cls]].index(word.lower())
    return apply_casing(targets[pair.other(cls)][position], word)


def feature_for_pair(feature, name: str):
    """``feature`` as the stages of pair ``name`` (``"a-b"``) see it: ``pairs`` is ``[name]``, so
    ``ClassPair.of_feature`` and everything built on it (labels, identity classes, factors) is that
    pair's. Fields are copied without reading them through the params guard, so a stage that did
    not declare e.g. ``feature.pairs`` in dvc.yaml still gets its view."""
    import dataclasses

    if not dataclasses.is_dataclass(feature):  # a plain namespace (tests, scripts)
        from types import SimpleNamespace

        return SimpleNamespace(**{**vars(feature), "pairs": [name]})
    values = {f.name: object.__getattribute__(feature, f.name) for f in dataclasses.fields(feature)}
    return type(feature)(**{**values, "pairs": [name]})
