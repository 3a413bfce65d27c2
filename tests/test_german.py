"""German articles: the 'deb:' fortune source (gradiend_core.data.read_deb) and the article
analyser (gradiend_core.german) against hand labels of fortunes-de sentences.

The source tests build a package folder by hand (no apt-get). The analyser tests need HanTa and
german-nouns and are skipped without them; the accuracy floors are the figures measured on
tests/fixtures/german_cells_50.json minus a small margin.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gradiend_core.data import DEB_CACHE, fortune_records, read_deb, read_documents
from gradiend_core.errors import GradiendError

FIXTURE = Path(__file__).parent / "fixtures" / "german_cells_50.json"

FORTUNES = """Der Mann schläft.
Er träumt
von der Frau.
\t\t-- Ein Dichter
\t\t   (Gesammelte Werke)
%
%
Die Katze sitzt auf dem Dach.
%
\t\t-- Eine Zuschreibung vor dem Text
Das Haus ist groß.
— Anonym
%
Ein Satz ohne Ende
"""


def test_fortune_records_one_document_per_record_without_attributions():
    assert fortune_records(FORTUNES) == [
        "Der Mann schläft. Er träumt von der Frau.",
        "Die Katze sitzt auf dem Dach.",
        "Das Haus ist groß.",
        "Ein Satz ohne Ende",
    ]
    assert fortune_records("%\n\n%\n") == []
    assert fortune_records("Erste Zeile\r\n%\r\nZweite -- mitten im Satz\r\n") == [
        "Erste Zeile",
        "Zweite -- mitten im Satz",
    ]


def _package(root: Path) -> Path:
    """A package folder laid out as `dpkg -x` leaves fortunes-de: text files, a .u8 symlink to
    each, and binary .dat indexes elsewhere."""
    games = root / "usr" / "share" / "games"
    (games / "fortunes" / "de").mkdir(parents=True)
    (games / "fortunes-de").mkdir()
    (games / "fortunes" / "de" / "zitate").write_text(FORTUNES, encoding="utf-8")
    (games / "fortunes" / "de" / "witze").write_text("Kommt ein Pferd in die Bar.\n%\n")
    (games / "fortunes" / "de" / "zitate.u8").symlink_to("zitate")
    (games / "fortunes-de" / "zitate.dat").write_bytes(b"\x00\x00\x00\x02\xff\xfe")
    (root / "usr" / "share" / "doc").mkdir(parents=True)
    (root / "usr" / "share" / "doc" / "README").write_text("Keine Sprüche hier.\n")
    return root


def test_read_deb_reads_the_fortune_files_of_a_cached_package(tmp_path):
    _package(tmp_path / "deb" / "fortunes-xx")
    docs = read_deb("fortunes-xx", cache=tmp_path / "deb")
    assert docs == ["Kommt ein Pferd in die Bar.", *fortune_records(FORTUNES)]  # sorted by path
    only = read_deb("fortunes-xx/usr/share/games/fortunes/de/witze", cache=tmp_path / "deb")
    assert only == ["Kommt ein Pferd in die Bar."]
    with pytest.raises(GradiendError, match=r"matches no file .*check the glob"):
        read_deb("fortunes-xx/usr/share/games/nothing*", cache=tmp_path / "deb")


def test_deb_sources_go_through_read_documents_from_the_working_directory(tmp_path, monkeypatch):
    _package(tmp_path / DEB_CACHE / "fortunes-xx")
    monkeypatch.chdir(tmp_path)
    docs = read_documents("deb:fortunes-xx/usr/share/games/fortunes/de/zitate", "text")
    assert docs == fortune_records(FORTUNES)
    latin = tmp_path / DEB_CACHE / "fortunes-xx" / "usr" / "share" / "games" / "fortunes" / "de"
    (latin / "alt").write_bytes("Größe\n".encode("latin-1"))
    with pytest.raises(GradiendError, match=r"alt: is not valid utf-8 .*data.encoding"):
        read_documents("deb:fortunes-xx", "text")
    assert "Größe" in read_documents("deb:fortunes-xx/**/alt", "text", encoding="latin-1")


def test_a_missing_package_without_apt_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(GradiendError) as err:
        read_deb("fortunes-de", cache=tmp_path / "deb", param="data.sources")
    message = str(err.value)
    assert "\n" not in message
    assert "'data.sources'" in message and "apt-get download fortunes-de" in message
    assert "dpkg -x" in message
    assert not (tmp_path / "deb").exists()


# ---- the analyser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def analyser():
    pytest.importorskip("HanTa")
    pytest.importorskip("german_nouns")
    from gradiend_core.german import GermanArticleAnalyzer

    return GermanArticleAnalyzer()


def _cells(analyser, sentence: str) -> dict[int, dict]:
    return {t.start: t.morph for t in analyser.analyse([sentence])[0]}


MASC_NOM = {"Gender": "Masc", "Case": "Nom", "Number": "Sing"}
FEM_NOM = {"Gender": "Fem", "Case": "Nom", "Number": "Sing"}


def test_clear_cases(analyser):
    tokens = analyser.analyse(["Der Mann schläft."])[0]
    assert [(t.start, t.end, t.text, t.pos, t.tag, t.lemma) for t in tokens] == [
        (0, 3, "Der", "DET", "ART", "der")
    ]
    assert tokens[0].morph == MASC_NOM
    assert _cells(analyser, "Ich gebe der Frau das Buch.") == {
        9: {"Gender": "Fem", "Case": "Dat", "Number": "Sing"},
        18: {"Gender": "Neut", "Case": "Acc", "Number": "Sing"},
    }
    # the relative pronoun das is no article
    assert _cells(analyser, "Das Haus, das ich sehe, ist groß.") == {
        0: {"Gender": "Neut", "Case": "Nom", "Number": "Sing"}
    }
    assert _cells(analyser, "Der ist doch verrückt.") == {}  # demonstrative
    assert analyser.analyse(["Ein Satz ohne Artikel.", ""]) == [[], []]


def test_nominative_and_accusative_of_die_and_das(analyser):
    assert _cells(analyser, "Dann sah die Frau das Kind.") == {
        9: FEM_NOM,
        18: {"Gender": "Neut", "Case": "Acc", "Number": "Sing"},
    }
    assert _cells(analyser, "Ich weiß, dass die Frau das Buch liest.")[15] == FEM_NOM
    assert _cells(analyser, "Wer war eigentlich die nette Dame vorhin?")[19] == FEM_NOM
    # a participle after a form of sein: no copula
    assert _cells(analyser, "Er ist die Treppe hinuntergegangen.")[7]["Case"] == "Acc"
    assert _cells(analyser, "Die schönen alten Häuser stehen am Rand der Stadt.") == {
        0: {"Case": "Nom", "Number": "Plur"},
        40: {"Gender": "Fem", "Case": "Gen", "Number": "Sing"},
    }


def test_compounds_prepositions_and_undecided_keys(analyser):
    assert _cells(analyser, "Der Neutronenreflektor ist kaputt.")[0] == MASC_NOM
    assert _cells(analyser, "Wir fahren mit der Bahn in die Stadt.") == {
        15: {"Gender": "Fem", "Case": "Dat", "Number": "Sing"},
        27: {"Gender": "Fem", "Case": "Acc", "Number": "Sing"},
    }
    # a relative clause: the case of die is not decided, so a Case filter rejects it
    cells = _cells(analyser, "Das ist das Buch, das die Frau liest.")
    assert cells == {
        8: {"Gender": "Neut", "Case": "Nom", "Number": "Sing"},
        22: {"Gender": "Fem", "Number": "Sing"},
    }


def _score(analyser, records: list[dict]) -> dict[str, int]:
    """Counts over hand-labelled occurrences: article vs pronoun right, full cell right (an
    undecided key counts as wrong), cells given in full and right among them."""
    sentences = list(dict.fromkeys(r["sentence"] for r in records))
    found = {
        s: {t.start: t.morph for t in tokens}
        for s, tokens in zip(sentences, analyser.analyse(sentences), strict=True)
    }
    counts = dict.fromkeys(["n", "article", "labelled", "exact", "full", "full_right"], 0)
    for r in records:
        morph = found[r["sentence"]].get(r["start"])
        counts["n"] += 1
        counts["article"] += (morph is not None) == r["article"]
        full = morph is not None and {"Case", "Number"} <= set(morph)
        full = full and ("Gender" in morph or morph["Number"] == "Plur")
        counts["full"] += full
        if r["cell"] is None:  # a pronoun (a full cell given to it is a wrong one) or undecidable
            continue
        counts["labelled"] += 1
        counts["exact"] += morph == r["cell"]
        counts["full_right"] += full and morph == r["cell"]
    return counts


@pytest.fixture(scope="module")
def labels():
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def test_fixture_is_well_formed(labels):
    sample = labels["sample"]
    assert len({r["sentence"] for r in sample}) == 50
    for r in sample + labels["development_sample"] + labels["cell_precision_sample"]:
        word = r["sentence"][r["start"] : r["start"] + len(r["word"])]
        assert word == r["word"] and word.lower() in ("der", "die", "das", "den", "dem", "des")
        assert r["cell"] is None or r["article"]
        if r["cell"] is not None:
            assert set(r["cell"]) - {"Gender"} == {"Case", "Number"}
            assert ("Gender" in r["cell"]) == (r["cell"]["Number"] == "Sing")


def test_accuracy_on_the_held_out_hand_labels(analyser, labels):
    c = _score(analyser, labels["sample"])  # measured: 93 of 94, 62 of 76, 62 of 64
    assert c["n"] == 94
    assert c["article"] / c["n"] >= 0.95
    assert c["exact"] / c["labelled"] >= 0.75
    assert c["full_right"] / c["full"] >= 0.93


def test_accuracy_on_the_development_hand_labels(analyser, labels):
    c = _score(analyser, labels["development_sample"])  # measured: 105 of 107, 77 of 92, 77 of 80
    assert c["article"] / c["n"] >= 0.95
    assert c["exact"] / c["labelled"] >= 0.77
    assert c["full_right"] / c["full"] >= 0.93


@pytest.mark.parametrize("cell", ["masc_nom", "fem_nom"])
def test_precision_of_the_two_contrasted_cells(analyser, labels, cell):
    """Of 40 seeded predictions each, hand-checked: 38 Masc-Nom der and 39 Fem-Nom die were
    right when measured (the others: two demonstrative der, one infinitive instruction)."""
    wanted = MASC_NOM if cell == "masc_nom" else FEM_NOM
    records = [r for r in labels["cell_precision_sample"] if r["predicted"] == cell]
    assert len(records) == 40
    sentences = list(dict.fromkeys(r["sentence"] for r in records))
    found = {
        s: {t.start: t.morph for t in tokens}
        for s, tokens in zip(sentences, analyser.analyse(sentences), strict=True)
    }
    predicted = [r for r in records if found[r["sentence"]].get(r["start"]) == wanted]
    right = [r for r in predicted if r["cell"] == wanted]
    assert len(predicted) >= 38  # the analyser still predicts the cell for (almost) all of them
    assert len(right) / len(predicted) >= 0.9
