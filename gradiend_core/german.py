"""German definite articles and their gender-case-number cell (``feature.analyzer``).

``GermanArticleAnalyzer.analyse(sentences)`` returns, per sentence, one ``Token`` for every
definite-article use of *der, die, das, den, dem, des* (any casing): ``pos`` ``DET``, ``tag``
``ART``, lemma ``der`` and ``morph`` with ``Gender`` (Masc/Fem/Neut; never on plurals), ``Case``
(Nom/Acc/Dat/Gen) and ``Number`` (Sing/Plur). A key is left out when the rules below cannot decide
it, so a filter that needs it rejects the token. Pronoun uses of the same words (relative *das*,
demonstrative *Der ist ...*) get no token. No German spaCy pipeline installs from PyPI; this
analyser needs two packages that do:

* **HanTa** (Hannover Tagger, STTS tags) tags the sentence: ``ART`` vs ``PRELS``/``PDS`` decides
  article or pronoun, and the tags delimit the noun phrase and its clause;
* **german-nouns** (~100k Wiktionary nouns; only its CSV is read) gives a noun form's genders and
  the case-number slots it fills.

For each article the cell is decided in steps; each step narrows a set of candidate cells and is
skipped when it would leave none:

1. the article form's cells (*der*: Masc Nom Sg, Fem Dat Sg, Fem Gen Sg, Gen Pl; *die*: Fem
   Nom/Acc Sg, Nom/Acc Pl; *das*: Neut Nom/Acc Sg; *den*: Masc Acc Sg, Dat Pl; *dem*: Masc/Neut
   Dat Sg; *des*: Masc/Neut Gen Sg);
2. the head noun: the first noun (``NN``, ``NE``, ``NNA``, ``NNI``) after the article, skipping
   adjectives, adverbs, numbers, truncated words and *und*/commas between adjectives (at most 6
   tokens). Its form is looked up in german-nouns (whole word, then the part after the last
   hyphen, then the longest known compound tail such as *Reflektor* in *Neutronenreflektor*);
   every (gender, case, number) it can fill is a candidate; an unknown noun that ends in neither
   *-n* nor *-s* is no dative plural. Adjectives after a definite article are weak: *-e* only in
   Nom Sg and Fem/Neut Acc Sg, *-en* everywhere else;
3. a preposition right before the article leaves its cases (*mit* Dat, *für* Acc, *in* Dat/Acc,
   *wegen* Gen/Dat, ...);
4. genitive: kept alone when the article follows a noun (*der Rand der Stadt*) or a genitive
   preposition, dropped otherwise (genitive objects and pre-nominal genitives are rare);
5. subject or not, when Nominative and another case are still open (typically *die* Fem Sg or
   Plural, *das*, and *der* before an unknown noun): Nominative when the article follows a form of
   *sein*/*bleiben* (adverbs between; a copula, unless a participle follows in the clause), else
   *not* Nominative when the clause before it already has a subject (a personal pronoun *ich, du,
   er, sie, es, wir, ihr, man* or a noun phrase decided Nominative), else Nominative when the
   article opens the sentence (after quotes, a colon or a sentence-initial conjunction), or is in
   a clause opened by a subordinating conjunction (*dass sich die Frau ...*), or opens a clause
   and its noun is followed by the finite verb (*..., die Zeiten sollen ...*), or follows the
   finite verb of a clause whose first part holds no noun phrase outside a prepositional phrase
   (*Dann sah die Frau ...*, *Im Winter trägt das Kind ...*); otherwise undecided.

A clause here ends at ``, ; : ( ) " -`` and at coordinating conjunctions.

Limits: the rules are surface heuristics, not a parser. Object-first clauses (*das Denken
übernimmt die Galionsfigur*), infinitive instructions (*Die Hälfte des Teiges in die Form
füllen*), comparisons (*als die Mittel*), dative or genitive noun phrases that start a sentence,
nouns missing from german-nouns (the cell is then read from the article and the context alone),
HanTa errors (a demonstrative *der* tagged as article, noun vs adjective) and nouns with several
genders or syncretic forms (*der Lehrer*: Masc Nom Sg or Gen Pl) cause errors or undecided keys;
relative clauses (*das Buch, das die Frau liest*) and coordinated clauses without their subject
are mostly left undecided. Measured on hand-labelled fortunes-de sentences
(``tests/fixtures/german_cells_50.json``, a held-out sample of 50 sentences with 94 article-form
occurrences): article vs pronoun right for 93; of the 76 articles with a labelled cell, 62 got
exactly that cell (12 had a key left undecided, 2 a wrong value); 62 of the 64 occurrences given
a full cell were right. Of 40 seeded Masc-Nom *der* and 40 Fem-Nom *die* predictions, 38 and 39
were right. Loading takes ~2 s (the noun table); tagging ~1.5-2 ms per sentence with an article
form on one CPU core (sentences without one are not tagged).
"""

from __future__ import annotations

import csv
import importlib.resources
import re
from collections import defaultdict

from gradiend_core.errors import GradiendError
from gradiend_core.linguistic import Token

INSTALL = "pip install HanTa==1.2.1 && pip install --no-deps german-nouns==1.2.5"

MASC, FEM, NEUT = "Masc", "Fem", "Neut"
NOM, ACC, DAT, GEN = "Nom", "Acc", "Dat", "Gen"
SING, PLUR = "Sing", "Plur"

ARTICLE_CELLS: dict[str, frozenset] = {
    "der": frozenset({(MASC, NOM, SING), (FEM, DAT, SING), (FEM, GEN, SING), (None, GEN, PLUR)}),
    "die": frozenset({(FEM, NOM, SING), (FEM, ACC, SING), (None, NOM, PLUR), (None, ACC, PLUR)}),
    "das": frozenset({(NEUT, NOM, SING), (NEUT, ACC, SING)}),
    "den": frozenset({(MASC, ACC, SING), (None, DAT, PLUR)}),
    "dem": frozenset({(MASC, DAT, SING), (NEUT, DAT, SING)}),
    "des": frozenset({(MASC, GEN, SING), (NEUT, GEN, SING)}),
}
ALL_CELLS = frozenset().union(*ARTICLE_CELLS.values())
# Weak adjective endings after a definite article: -e in these cells, -en in all others.
WEAK_E = frozenset(
    {(g, NOM, SING) for g in (MASC, FEM, NEUT)} | {(FEM, ACC, SING), (NEUT, ACC, SING)}
)
WEAK_EN = ALL_CELLS - WEAK_E
ARTICLE = re.compile(r"(?<!\w)(?:der|die|das|den|dem|des)(?!\w)", re.IGNORECASE)
TOKEN = re.compile(r"\w+(?:[-'’]\w+)*-?|[^\w\s]")


def _words(text: str) -> list[str]:
    return text.split()


PREPOSITION_CASES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(_words("durch für gegen ohne um bis wider per pro"), (ACC,)),
    **dict.fromkeys(
        _words("aus bei mit nach seit von zu gegenüber ab außer entgegen gemäß samt nebst zufolge"),
        (DAT,),
    ),
    **dict.fromkeys(  # genitive prepositions, also heard with the dative (*wegen dem*)
        _words(
            "während trotz wegen statt anstatt aufgrund infolge innerhalb außerhalb oberhalb"
            " unterhalb angesichts anhand bezüglich laut dank mittels seitens ungeachtet zwecks"
            " inmitten anstelle jenseits diesseits"
        ),
        (GEN, DAT),
    ),
    **dict.fromkeys(_words("an auf hinter in neben über unter vor zwischen"), (DAT, ACC)),
}
SUBJECT_PRONOUNS = frozenset(_words("ich du er sie es wir ihr man"))
COPULA = frozenset(  # finite forms of *sein* and *bleiben*
    _words(
        "ist sind war waren bin bist seid wäre wären wärst sei seien bleibt bleiben blieb blieben"
        " bleibe"
    )
)
NOUN_TAGS = frozenset({"NN", "NE", "NNA", "NNI"})
FINITE_TAGS = frozenset({"VV(FIN)", "VA(FIN)", "VM(FIN)"})
PARTICIPLE_TAGS = frozenset({"VV(PP)", "VA(PP)", "VM(PP)"})
# Tokens allowed between an article and its head noun.
NP_INNER_TAGS = frozenset({"ADJ(A)", "ADJ(D)", "ADV", "CARD", "PIAT", "PTKA", "TRUNC", "PTKNEG"})
# Tokens allowed between a copula or finite verb and the article (adverbs, particles).
ADVERB_TAGS = frozenset({"ADV", "ADJ(D)", "PTKNEG", "PTKA", "PROAV"})
CLAUSE_BREAK = frozenset(',;:()"„“”«»‚‘’–—-') | {"'"}
SENTENCE_OPEN = frozenset(':"„“”«»‚‘’–—-(') | {"'"}
NP_LIKE_TAGS = NOUN_TAGS | {"PDS", "PIS", "PPER", "PWS", "PRELS"}

_CASES = {"nominativ": NOM, "genitiv": GEN, "dativ": DAT, "akkusativ": ACC}
_NUMBERS = {"singular": SING, "plural": PLUR}
_GENDERS = {"m": MASC, "f": FEM, "n": NEUT}


def load_noun_cells() -> dict[str, frozenset]:
    """german-nouns' CSV -> noun form (as written) -> the cells it can fill.

    Plural cells carry no gender; a form of a noun with several genders fills every one of them.
    The ``stark``/``gemischt`` columns of adjectival nouns are skipped (after a definite article
    they decline weakly); adjectival nouns may be of any gender.
    """
    table = importlib.resources.files("german_nouns") / "nouns.csv"
    with table.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        slots = {}
        for i, name in enumerate(header):
            parts = name.split()
            if len(parts) >= 2 and parts[0] in _CASES and parts[1].rstrip("*") in _NUMBERS:
                if len(parts) == 3 and parts[2] in ("stark", "gemischt"):
                    continue
                slots[i] = (_CASES[parts[0]], _NUMBERS[parts[1].rstrip("*")])
        genus = [i for i, name in enumerate(header) if name.startswith("genus")]
        cells: dict[str, set] = defaultdict(set)
        for row in reader:
            genders = {_GENDERS[row[i]] for i in genus if row[i] in _GENDERS}
            if "adjektivische Deklination" in row[1]:
                genders = {MASC, FEM, NEUT}
            for i, (case, number) in slots.items():
                form = row[i] if i < len(row) else ""
                if not form:
                    continue
                if number == PLUR:
                    cells[form].add((None, case, PLUR))
                else:
                    cells[form].update((g, case, SING) for g in genders)
    return {form: frozenset(c) for form, c in cells.items()}


class GermanArticleAnalyzer:
    """Definite articles of German sentences with their cell (module docstring)."""

    def __init__(self, tagger=None, nouns: dict[str, frozenset] | None = None):
        try:
            from HanTa import HanoverTagger
        except ImportError:
            raise GradiendError(
                "params.yaml: 'feature.analyzer' = 'german-articles' needs the packages HanTa and"
                f" german-nouns; run '{INSTALL}'."
            ) from None
        try:
            self.nouns = load_noun_cells() if nouns is None else nouns
        except ModuleNotFoundError:
            raise GradiendError(
                "params.yaml: 'feature.analyzer' = 'german-articles' needs the package"
                f" german-nouns; run '{INSTALL}'."
            ) from None
        self.tagger = tagger or HanoverTagger.HanoverTagger("morphmodel_ger.pgz")

    def analyse(self, sentences: list[str]) -> list[list[Token]]:
        """Per sentence, a Token for every definite article (sentences without an article form
        are not tagged)."""
        return [self.analyse_one(s) if ARTICLE.search(s) else [] for s in sentences]

    def analyse_one(self, sentence: str) -> list[Token]:
        spans = [(m.start(), m.end(), m.group()) for m in TOKEN.finditer(sentence)]
        if not spans:
            return []
        words = [w for _, _, w in spans]
        tags = list(self.tagger.tag_sent(words, taglevel=0))
        out: list[Token] = []
        nominative: list[int] = []  # token indices of articles decided Nominative
        for i, (start, end, word) in enumerate(spans):
            if tags[i] != "ART" or word.lower() not in ARTICLE_CELLS:
                continue
            cells = self._cells(i, words, tags, nominative)
            morph = _decided(cells)
            if morph.get("Case") == NOM:
                nominative.append(i)
            out.append(Token(start, end, word, "DET", "ART", morph, "der"))
        return out

    def _cells(self, i: int, words: list[str], tags: list[str], nominative: list[int]) -> set:
        cells = set(ARTICLE_CELLS[words[i].lower()])
        head, adjectives = _head(i, words, tags)
        if head is not None:
            known = self._noun_cells(words[head])
            if not known and not words[head].endswith(("n", "s")):
                known = ALL_CELLS - {(None, DAT, PLUR)}  # a dative plural ends in -n or -s
            cells = _narrow(cells, known)
        for adj in adjectives:
            low = adj.lower()
            weak = WEAK_EN if low.endswith("en") else WEAK_E if low.endswith("e") else None
            if weak is not None:
                cells = _narrow(cells, weak)
        previous = words[i - 1].lower() if i > 0 else ""
        if i > 0 and tags[i - 1] in ("APPR", "APPO") and previous in PREPOSITION_CASES:
            allowed = PREPOSITION_CASES[previous]
            cells = _narrow(cells, {c for c in cells if c[1] in allowed})
        if len({c[1] for c in cells}) > 1 and any(c[1] == GEN for c in cells):
            after_noun = i > 0 and tags[i - 1] in NOUN_TAGS
            genitive_prep = GEN in PREPOSITION_CASES.get(previous, ()) and tags[i - 1] == "APPR"
            if after_noun or genitive_prep:
                cells = _narrow(cells, {c for c in cells if c[1] == GEN})
            else:
                cells = _narrow(cells, {c for c in cells if c[1] != GEN})
        if len({c[1] for c in cells}) > 1 and any(c[1] == NOM for c in cells):
            subject = _subject_position(i, words, tags, nominative, head)
            if subject is True:
                cells = _narrow(cells, {c for c in cells if c[1] == NOM})
            elif subject is False:
                cells = _narrow(cells, {c for c in cells if c[1] != NOM})
        return cells

    def _noun_cells(self, word: str) -> frozenset:
        """The cells of a noun form: the word, its part after the last hyphen, or the longest
        known tail of a compound (at least 3 letters, capitalised)."""
        nouns = self.nouns
        if word in nouns:
            return nouns[word]
        tail = word.rsplit("-", 1)[-1]
        if tail and tail[:1].upper() + tail[1:] in nouns:
            return nouns[tail[:1].upper() + tail[1:]]
        for k in range(1, len(tail) - 2):
            candidate = tail[k].upper() + tail[k + 1 :]
            if candidate in nouns:
                return nouns[candidate]
        return frozenset()


def _narrow(cells: set, allowed) -> set:
    """``cells`` that ``allowed`` admits (a plural cell of ``allowed`` has no gender); ``cells``
    unchanged when none is left."""
    kept = {c for c in cells if c in allowed}
    return kept or set(cells)


def _decided(cells: set) -> dict[str, str]:
    """The morph keys on which every candidate cell agrees (no Gender on plurals)."""
    morph = {}
    genders = {c[0] for c in cells}
    if len(genders) == 1 and None not in genders:
        morph["Gender"] = genders.pop()
    cases = {c[1] for c in cells}
    if len(cases) == 1:
        morph["Case"] = cases.pop()
    numbers = {c[2] for c in cells}
    if len(numbers) == 1:
        morph["Number"] = numbers.pop()
    return morph


def _head(i: int, words: list[str], tags: list[str]) -> tuple[int | None, list[str]]:
    """The index of the article's head noun (None when there is none) and the attributive
    adjectives before it."""
    adjectives = []
    for j in range(i + 1, min(i + 8, len(words))):
        tag = tags[j]
        if tag in NOUN_TAGS:
            return j, adjectives
        if tag == "ADJ(A)":
            adjectives.append(words[j])
        elif tag in NP_INNER_TAGS:
            pass
        elif tag in ("KON", "$,") and adjectives and j + 1 < len(words):
            if tags[j + 1] not in ("ADJ(A)", "TRUNC", "ADV"):
                break
        else:
            break
    return None, adjectives


def _clause_start(i: int, words: list[str], tags: list[str]) -> int:
    """Index of the first token of the clause that holds token ``i``."""
    j = i
    while j > 0 and words[j - 1] not in CLAUSE_BREAK and tags[j - 1] not in ("KON", "$.", "$,"):
        j -= 1
    return j


def _subject_position(
    i: int, words: list[str], tags: list[str], nominative: list[int], head: int | None
) -> bool | None:
    """Whether the article's noun phrase is a subject (or predicate nominative): True, False or
    None when undecided (module docstring, step 5)."""
    start = _clause_start(i, words, tags)
    end = next(
        (
            j
            for j in range(i + 1, len(words))
            if words[j] in CLAUSE_BREAK or tags[j] in ("$.", "$,", "KON")
        ),
        len(words),
    )
    j = i - 1
    while j >= start and tags[j] in ADVERB_TAGS:
        j -= 1
    copula = j >= start and words[j].lower() in COPULA and tags[j] in FINITE_TAGS
    if copula and not any(tags[k] in PARTICIPLE_TAGS for k in range(i + 1, end)):
        return True
    before = range(start, i)
    if any(tags[k] == "PPER" and words[k].lower() in SUBJECT_PRONOUNS for k in before):
        return False
    if any(tags[k] == "PIS" and words[k].lower() == "man" for k in before):
        return False
    if any(start <= k < i for k in nominative):
        return False
    first = 0
    while first < i and (words[first] in SENTENCE_OPEN or tags[first] in ("$(", "$.")):
        first += 1
    if first < i and tags[first] == "KON" and first + 1 == i:
        first += 1
    if i == first or (i > 0 and (words[i - 1] in SENTENCE_OPEN and words[i - 1] != "-")):
        return True
    if tags[start] == "KOUS":
        return True
    if i == start and head is not None and head + 1 < len(words) and tags[head + 1] in FINITE_TAGS:
        return True
    if j >= start and tags[j] in FINITE_TAGS and j > start:
        prefield = range(start, j)
        in_pp = any(tags[k] in ("APPR", "APPRART", "KOUS") for k in prefield)
        return in_pp or not any(tags[k] in NP_LIKE_TAGS for k in prefield)
    return None
