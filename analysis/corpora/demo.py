"""The embedded offline demo corpus: an M2D2-format tree plus a web-like source corpus.

Written by this project from seeded grammars, so the whole pipeline runs with no download. The shape
mirrors what the paper studies:

* the source corpus (``sources/webtext.jsonl``) is web text in the OpenWebText style: news, blog and
  encyclopedic documents whose paragraphs are separated by blank lines; about half of it is about the
  same topics, in the same encyclopedic register, as the Wikipedia-like domains;
* Wikipedia-like domains are encyclopedic articles, one paragraph per line, a blank line between
  articles: close to the source corpus;
* S2ORC-like domains are scientific papers with their own vocabulary, LaTeX notation, citations,
  numbered section headings and display equations on lines of their own, and no blank lines inside
  a paper: far from the source corpus, with a different newline structure.

The domain names are real M2D2 names (with ``__`` and ``.``), so the demo exercises the same naming
paths as the real data. The same seed always gives byte-identical files.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from analysis.corpora.m2d2 import SPLITS
from analysis.io import atomic_open, derive_seed, write_text

log = logging.getLogger(__name__)

SOURCE_NAME = "webtext"


# --------------------------------------------------------------------------------------------------
# Shared vocabulary
# --------------------------------------------------------------------------------------------------

_SYLLABLES = [
    "al", "an", "ar", "ba", "bel", "bor", "ca", "cor", "da", "del", "dor", "el", "en", "fa", "fen",
    "ga", "gor", "ha", "hel", "in", "ka", "kel", "la", "lin", "lor", "ma", "mar", "mel", "mon", "na",
    "nor", "o", "or", "pa", "pel", "ra", "ren", "ri", "ro", "sa", "sel", "sor", "ta", "tel", "tor",
    "u", "va", "vel", "ven", "wen", "ya", "za", "zor",
]
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
]
_ORDINALS = ["twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth",
             "eighteenth", "nineteenth", "twentieth"]
_INSTITUTIONS = ["University", "Museum", "Institute", "Library", "Academy", "Society", "Foundation",
                 "College", "Archive", "Council"]
_LANGUAGES = ["Latin", "Greek", "Old Norse", "Persian", "Arabic", "Sanskrit", "Old French",
              "Middle English", "Portuguese", "Dutch"]
_CONNECTIVES = ["However,", "In addition,", "As a result,", "Later,", "At the same time,",
                "For this reason,", "In particular,", "Nevertheless,", "Meanwhile,", "Moreover,"]


@dataclass(frozen=True)
class Topic:
    """Slot fillers for one subject: nouns (singular, plural), people, adjectives, verbs."""

    nouns: Sequence[str]
    people: Sequence[str]
    adjectives: Sequence[str]
    verbs: Sequence[str]  # past participles, for passives


_UNCOUNTABLE = {
    "wheat", "rice", "maize", "barley", "livestock", "cattle", "knowledge", "justice", "logic",
    "poetry", "folklore", "literature", "heritage", "irrigation", "fertilizer", "consciousness",
    "freedom", "existence", "happiness", "truth", "reason", "ethics", "metaphysics",
    "epistemology", "luminosity", "background", "weather", "traffic", "tourism", "harvest",
}


def _plural(noun: str) -> str:
    if noun in _UNCOUNTABLE:
        return f"kinds of {noun}"
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


WIKI_TOPICS: dict[str, Topic] = {
    "Culture_and_the_arts__Culture_and_Humanities": Topic(
        nouns=["tradition", "festival", "folklore", "literature", "museum", "manuscript", "poetry",
               "ritual", "heritage", "dialect", "craft", "theatre", "novel", "painting", "library",
               "chronicle", "song", "legend", "costume", "dance"],
        people=["poet", "novelist", "scholar", "historian", "composer", "painter", "playwright",
                "critic", "translator", "collector"],
        adjectives=["oral", "classical", "vernacular", "medieval", "regional", "modern", "popular",
                    "sacred", "rural", "courtly"],
        verbs=["performed", "collected", "translated", "celebrated", "recorded", "studied",
               "preserved", "revived"],
    ),
    "History_and_events__By_period": Topic(
        nouns=["empire", "dynasty", "kingdom", "treaty", "rebellion", "war", "siege", "reform",
               "republic", "colony", "council", "revolution", "parliament", "alliance", "province",
               "campaign", "succession", "fortress", "trade route", "charter"],
        people=["emperor", "king", "general", "chancellor", "envoy", "governor", "queen",
                "admiral", "bishop", "merchant"],
        adjectives=["ancient", "early modern", "colonial", "imperial", "feudal", "late medieval",
                    "revolutionary", "dynastic", "northern", "maritime"],
        verbs=["signed", "besieged", "founded", "annexed", "defeated", "abolished", "restored",
               "negotiated"],
    ),
    "Technology_and_applied_sciences__Agriculture": Topic(
        nouns=["crop", "wheat", "maize", "rice", "irrigation", "soil", "fertilizer", "livestock",
               "harvest", "orchard", "cattle", "plough", "terrace", "cooperative", "seed", "barley",
               "vineyard", "pasture", "granary", "rotation"],
        people=["farmer", "agronomist", "breeder", "grower", "landowner", "veterinarian",
                "shepherd", "miller", "gardener", "surveyor"],
        adjectives=["arable", "organic", "dryland", "intensive", "subsistence", "irrigated",
                    "fertile", "seasonal", "mechanised", "traditional"],
        verbs=["cultivated", "harvested", "irrigated", "introduced", "planted", "grazed",
               "exported", "improved"],
    ),
    "Philosophy_and_thinking__Philosophy": Topic(
        nouns=["ethics", "metaphysics", "epistemology", "argument", "virtue", "reason", "knowledge",
               "justice", "logic", "mind", "consciousness", "duty", "freedom", "existence", "belief",
               "doctrine", "happiness", "truth", "language", "perception"],
        people=["philosopher", "thinker", "logician", "theologian", "moralist", "essayist",
                "teacher", "commentator", "sceptic", "rhetorician"],
        adjectives=["moral", "rational", "empirical", "a priori", "sceptical", "idealist",
                    "materialist", "practical", "speculative", "analytic"],
        verbs=["defended", "criticised", "developed", "rejected", "revised", "formulated",
               "debated", "taught"],
    ),
}

NEWS_TOPICS: list[Topic] = [
    Topic(
        nouns=["council", "budget", "election", "policy", "vote", "housing plan", "tax", "mayor",
               "committee", "proposal", "school board", "bridge"],
        people=["councillor", "official", "spokesperson", "resident", "analyst", "reporter"],
        adjectives=["local", "controversial", "new", "public", "federal", "annual"],
        verbs=["approved", "delayed", "announced", "criticised", "funded", "postponed"],
    ),
    Topic(
        nouns=["team", "season", "coach", "match", "league", "stadium", "player", "final",
               "tournament", "transfer", "goal", "record"],
        people=["coach", "striker", "captain", "fan", "manager", "goalkeeper"],
        adjectives=["young", "unbeaten", "home", "veteran", "rival", "top"],
        verbs=["signed", "injured", "suspended", "celebrated", "cancelled", "won"],
    ),
    Topic(
        nouns=["phone", "app", "update", "laptop", "battery", "network", "startup", "chip",
               "service", "subscription", "camera", "website"],
        people=["developer", "engineer", "reviewer", "founder", "user", "executive"],
        adjectives=["cheaper", "faster", "wireless", "popular", "latest", "free"],
        verbs=["released", "launched", "updated", "tested", "recalled", "redesigned"],
    ),
    Topic(
        nouns=["storm", "market", "price", "tourism", "hotel", "flight", "restaurant", "festival",
               "weather", "traffic", "hospital", "clinic"],
        people=["traveller", "owner", "doctor", "visitor", "driver", "nurse"],
        adjectives=["busy", "rising", "seasonal", "popular", "expensive", "crowded"],
        verbs=["reopened", "closed", "expanded", "reported", "rebuilt", "visited"],
    ),
]


class _Writer:
    """Fills templates from a topic with a seeded RNG; one instance per generated file."""

    def __init__(self, rng: random.Random, topic: Topic):
        self.rng = rng
        self.topic = topic

    def pick(self, seq: Sequence[str]) -> str:
        return seq[self.rng.randrange(len(seq))]

    def name(self) -> str:
        syllables = [self.pick(_SYLLABLES) for _ in range(self.rng.randint(2, 3))]
        return "".join(syllables).capitalize()

    def person(self) -> str:
        return f"{self.name()} {self.name()}"

    def place(self) -> str:
        return self.name() + self.pick(["", "ia", "burg", "ford", "ovo", "ara", "stan", " Valley"])

    def fill(self, template: str, **extra: str) -> str:
        t = self.topic
        slots = {
            "N": lambda: self.pick(t.nouns),
            "N2": lambda: self.pick(t.nouns),
            "Ns": lambda: _plural(self.pick(t.nouns)),
            "Ns2": lambda: _plural(self.pick(t.nouns)),
            "A": lambda: self.pick(t.adjectives),
            "A2": lambda: self.pick(t.adjectives),
            "P": lambda: self.pick(t.people),
            "Ps": lambda: _plural(self.pick(t.people)),
            "V": lambda: self.pick(t.verbs),
            "NAME": self.person,
            "SURNAME": self.name,
            "PLACE": self.place,
            "PLACE2": self.place,
            "YEAR": lambda: str(self.rng.randint(1150, 2019)),
            "YEAR2": lambda: str(self.rng.randint(1700, 2023)),
            "NUM": lambda: str(self.rng.choice([2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 40, 100, 250])),
            "PCT": lambda: str(self.rng.randint(3, 90)),
            "CENT": lambda: self.pick(_ORDINALS),
            "INST": lambda: self.pick(_INSTITUTIONS),
            "LANG": lambda: self.pick(_LANGUAGES),
            "DAY": lambda: self.pick(_WEEKDAYS),
            "MONTH": lambda: self.pick(_MONTHS),
            "CONN": lambda: self.pick(_CONNECTIVES),
        }
        values = {key: make() for key, make in slots.items() if "{" + key + "}" in template}
        values.update(extra)
        return template.format(**values)


# --------------------------------------------------------------------------------------------------
# Encyclopedic prose: the Wikipedia-like domains and half of the source corpus
# --------------------------------------------------------------------------------------------------

_ENCYCLOPEDIC = [
    "The {N} was first described by the {P} {NAME} in {YEAR}.",
    "During the {CENT} century, {Ns} in {PLACE} became increasingly {A}.",
    "It is closely associated with the {N} of {PLACE} and with {A} {Ns2}.",
    "According to {NAME}, the {N} reflects a {A} understanding of {N2}.",
    "By {YEAR2}, more than {NUM} {Ns} had been {V} in the region.",
    "Critics have argued that the {N} owes much to earlier {Ns2}.",
    "The term is derived from the {LANG} word for \"{N}\".",
    "Several {Ns} survive in the collections of the {SURNAME} {INST}.",
    "In {YEAR}, the {P} {NAME} published a study of {A} {Ns}, which remains influential.",
    "Today the {N} is {V} in {PLACE}, where it attracts about {NUM} thousand visitors each year.",
    "{CONN} the {A} {N} was {V} by {Ps} from {PLACE2}.",
    "The {N} of {PLACE} is often compared with the {A} {N2} of {PLACE2}.",
    "Its influence on later {Ns} has been the subject of debate among {Ps}.",
    "Most {Ps} agree that the {N} was {V} before {YEAR}.",
    "The {SURNAME} {INST} holds the largest collection of {A} {Ns} in {PLACE}.",
    "{CONN} about {PCT} percent of the {Ns} in {PLACE} were {V} by {YEAR2}.",
]


def encyclopedic_paragraph(w: _Writer, sentences: int) -> str:
    return " ".join(w.fill(w.pick(_ENCYCLOPEDIC)) for _ in range(sentences))


def wiki_article(w: _Writer) -> list[str]:
    """One article: a title line, then one paragraph per line (the M2D2 Wikipedia layout)."""
    title = f"{w.pick(w.topic.adjectives).capitalize()} {w.pick(w.topic.nouns)} of {w.place()}"
    adjective = w.pick(w.topic.adjectives)
    article = "an" if adjective[0] in "aeiou" else "a"
    opening = (
        f"The {title[0].lower() + title[1:]} is {article} {adjective} "
        f"{w.pick(w.topic.nouns)} associated with {w.place()}. "
        + encyclopedic_paragraph(w, w.rng.randint(2, 4))
    )
    body = [encyclopedic_paragraph(w, w.rng.randint(3, 6)) for _ in range(w.rng.randint(2, 5))]
    return [title, opening, *body]


# --------------------------------------------------------------------------------------------------
# News and blog prose: the rest of the source corpus
# --------------------------------------------------------------------------------------------------

_NEWS = [
    "On {DAY}, officials in {PLACE} said the {N} would be {V} by {MONTH}.",
    "\"We are very pleased with the {N},\" said {NAME}, a {P} at the {SURNAME} {INST}.",
    "The announcement comes after {NUM} {Ns} were {V} last year.",
    "Many {Ps} say the {A} {N} has made life harder for families in {PLACE}.",
    "The {N} is expected to cost about {NUM} million dollars, according to the {P}.",
    "It is not the first time the {N} has been {V} in {PLACE}.",
    "{NAME} told reporters that the {A} {N} was \"only the beginning\".",
    "Last {MONTH}, the {N} was {V} after complaints from {Ps}.",
    "Some {Ps} have questioned whether the {N} is worth the money.",
    "I have been following the {N} for years, and this {A} {N2} is something new.",
    "If you live in {PLACE}, you have probably heard about the {N} by now.",
    "The {P} said about {PCT} percent of {Ps} supported the {A} {N}.",
]


def news_paragraph(w: _Writer, sentences: int) -> str:
    return " ".join(w.fill(w.pick(_NEWS)) for _ in range(sentences))


def source_document(rng: random.Random) -> str:
    """One web document: paragraphs separated by a blank line, as in OpenWebText."""
    kind = rng.random()
    if kind < 0.5:  # encyclopedic text on a Wikipedia-domain topic
        w = _Writer(rng, rng.choice(list(WIKI_TOPICS.values())))
        paragraphs = wiki_article(w)[1:]
    elif kind < 0.7:  # news about a Wikipedia-domain topic
        w = _Writer(rng, rng.choice(list(WIKI_TOPICS.values())))
        paragraphs = [news_paragraph(w, rng.randint(2, 4)) for _ in range(rng.randint(2, 5))]
    else:  # general news and blogs
        w = _Writer(rng, rng.choice(NEWS_TOPICS))
        paragraphs = [news_paragraph(w, rng.randint(2, 4)) for _ in range(rng.randint(2, 6))]
    return "\n\n".join(paragraphs)


# --------------------------------------------------------------------------------------------------
# Scientific papers: the S2ORC-like domains
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """A scientific field: a topic, sentence templates with notation, equations, section names."""

    topic: Topic
    sentences: Sequence[str]
    symbols: Sequence[str]
    equations: Sequence[str]
    sections: Sequence[str]


def _values(rng: random.Random) -> dict[str, str]:
    return {
        "E": str(rng.choice([7, 8, 13, 13.6, 200, 900])),
        "L": f"{rng.uniform(0.5, 140):.1f}",
        "X": f"{rng.uniform(0.01, 9.9):.2f}",
        "ERR": f"{rng.uniform(0.01, 0.5):.2f}",
        "K": str(rng.randint(2, 12)),
        "MEV": str(rng.choice([5, 10, 30, 50, 120, 400])),
        "MASS": str(rng.choice([12, 16, 40, 48, 56, 90, 132, 208])),
        "T": f"{rng.uniform(0.5, 95):.1f}",
        "REF": ", ".join(str(rng.randint(1, 60)) for _ in range(rng.randint(1, 3))),
        "FIG": str(rng.randint(1, 9)),
    }


FIELDS: dict[str, Field] = {
    "hep-ex": Field(
        topic=Topic(
            nouns=["cross section", "luminosity", "calorimeter", "branching fraction", "jet",
                   "muon", "trigger", "vertex", "background", "asymmetry", "resonance",
                   "efficiency"],
            people=["collaboration"],
            adjectives=["inclusive", "differential", "prompt", "hadronic", "leptonic",
                        "systematic", "statistical", "fiducial"],
            verbs=["measured", "reconstructed", "calibrated", "estimated", "suppressed"],
        ),
        sentences=[
            "We present a measurement of the {A} {N} using {L} fb$^{{-1}}$ of $pp$ collisions at "
            "$\\sqrt{{s}} = {E}$ TeV [{REF}].",
            "Events are required to contain at least {K} jets with $p_T > {MEV}$ GeV and "
            "$|\\eta| < 2.4$.",
            "The {N} is {V} from a fit to the invariant mass distribution shown in Fig. {FIG}.",
            "The dominant {A} uncertainty arises from the {N} and amounts to {X}%.",
            "The result, ${SYM} = {X} \\pm {ERR}$ (stat) $\\pm {ERR}$ (syst), agrees with the "
            "Standard Model prediction [{REF}].",
            "Monte Carlo samples are generated with next-to-leading-order accuracy and passed "
            "through a full simulation of the detector.",
            "The {N} is {V} in control regions enriched in {A} events.",
        ],
        symbols=["\\sigma", "\\mathcal{B}", "A_{FB}", "R_K", "\\Gamma"],
        equations=[
            "$$ \\sigma = \\frac{{N_{{obs}} - N_{{bkg}}}}{{\\epsilon \\, \\mathcal{{L}}}} $$",
            "$$ m_{{\\mu\\mu}}^2 = (p_{{\\mu^+}} + p_{{\\mu^-}})^2 $$",
            "$$ \\mathcal{{B}}(B^0 \\to K^{{*0}} \\mu^+ \\mu^-) = ({X} \\pm {ERR}) \\times 10^{{-7}} $$",
        ],
        sections=["Introduction", "Detector and data sample", "Event selection",
                  "Systematic uncertainties", "Results", "Conclusions"],
    ),
    "math.AG": Field(
        topic=Topic(
            nouns=["scheme", "sheaf", "morphism", "variety", "divisor", "moduli space", "stack",
                   "curve", "surface", "line bundle", "Picard group", "cohomology group"],
            people=["author"],
            adjectives=["smooth", "projective", "proper", "coherent", "reduced", "quasi-compact",
                        "ample", "birational"],
            verbs=["constructed", "computed", "bounded", "characterised", "classified"],
        ),
        sentences=[
            "Let $X$ be a {A} {N} over an algebraically closed field $k$ of characteristic zero.",
            "We show that the {N} $\\mathcal{{O}}_X({K})$ is {A} if and only if $X$ is {A}.",
            "By Theorem {FIG}.{K}, the {N} ${SYM}$ is {V} by the Riemann--Roch formula.",
            "Suppose that $f \\colon X \\to Y$ is a {A} morphism of relative dimension {K}.",
            "Then $H^i(X, \\mathcal{{F}}) = 0$ for all $i > {K}$, which proves the claim.",
            "The proof relies on a {A} resolution of the {N} constructed in [{REF}].",
            "Lemma {FIG}.{K}. Every {A} {N} on $\\mathbb{{P}}^{K}$ is {V}.",
        ],
        symbols=["\\mathrm{Pic}(X)", "K_X", "\\chi(\\mathcal{F})", "\\omega_X", "D"],
        equations=[
            "$$ \\chi(X, \\mathcal{{O}}_X(D)) = \\frac{{1}}{{2}} D \\cdot (D - K_X) + \\chi(\\mathcal{{O}}_X) $$",
            "$$ 0 \\to \\mathcal{{F}}' \\to \\mathcal{{F}} \\to \\mathcal{{F}}'' \\to 0 $$",
            "$$ H^{K}(X, \\Omega^1_X) \\cong H^1(X, T_X)^\\vee $$",
        ],
        sections=["Introduction", "Preliminaries", "Main results", "Proof of Theorem 1",
                  "Examples", "Further questions"],
    ),
    "nucl-ex": Field(
        topic=Topic(
            nouns=["isotope", "nucleus", "beam", "target", "spectrometer", "excitation function",
                   "resonance", "half-life", "neutron yield", "gamma-ray spectrum",
                   "fission fragment", "angular distribution"],
            people=["collaboration"],
            adjectives=["neutron-rich", "proton-rich", "deformed", "inelastic", "isomeric",
                        "collective", "single-particle", "elastic"],
            verbs=["measured", "identified", "extracted", "populated", "normalised"],
        ),
        sentences=[
            "The ${{}}^{{{MASS}}}$Sn({SYM}) reaction was measured at {MEV} MeV/nucleon at the "
            "{SURNAME} facility [{REF}].",
            "A {A} {N} was {V} with an energy resolution of {X}% (FWHM).",
            "The {N} of the $J^\\pi = {K}^+$ state is found to be $T_{{1/2}} = {T} \\pm {ERR}$ ns.",
            "Gamma rays were detected with {K} high-purity germanium detectors placed at "
            "backward angles.",
            "The {N} agrees with shell-model calculations using the {A} interaction [{REF}].",
            "Cross sections were {V} to the elastic scattering yield measured simultaneously.",
        ],
        symbols=["p,n", "d,p", "\\alpha,\\gamma", "n,\\gamma", "p,2p"],
        equations=[
            "$$ \\frac{{d\\sigma}}{{d\\Omega}} = \\frac{{Y(\\theta)}}{{N_b N_t \\Delta\\Omega \\, \\epsilon}} $$",
            "$$ E_x = E_\\gamma + \\frac{{E_\\gamma^2}}{{2 M c^2}} $$",
            "$$ B(E2; 0^+ \\to 2^+) = {X} \\, e^2 b^2 $$",
        ],
        sections=["Introduction", "Experimental setup", "Data analysis", "Results",
                  "Discussion", "Summary"],
    ),
    "cond-mat.str-el": Field(
        topic=Topic(
            nouns=["Hubbard model", "spin liquid", "antiferromagnet", "Mott insulator",
                   "correlation function", "quasiparticle", "Kondo lattice", "phase diagram",
                   "order parameter", "Fermi surface", "spin gap", "charge density wave"],
            people=["authors"],
            adjectives=["frustrated", "itinerant", "strongly correlated", "two-dimensional",
                        "gapless", "topological", "paramagnetic", "half-filled"],
            verbs=["computed", "obtained", "stabilised", "suppressed", "characterised"],
        ),
        sentences=[
            "We study the {A} {N} on the triangular lattice using density matrix renormalization "
            "group calculations [{REF}].",
            "At $U/t = {K}$ the ground state is a {A} {N} with ${SYM} = {X}$.",
            "The {N} is {V} within dynamical mean-field theory at temperature $T = {T}$ K.",
            "Figure {FIG} shows the {N} as a function of doping $\\delta$.",
            "Below $T_c = {T}$ K the {N} develops a {A} structure.",
            "These results suggest that the {A} {N} is stable in the thermodynamic limit.",
        ],
        symbols=["\\langle S_i \\cdot S_j \\rangle", "\\Delta_s", "m^*/m", "\\chi(q)", "n_\\uparrow"],
        equations=[
            "$$ H = -t \\sum_{{\\langle ij \\rangle \\sigma}} c^\\dagger_{{i\\sigma}} c_{{j\\sigma}} + U \\sum_i n_{{i\\uparrow}} n_{{i\\downarrow}} $$",
            "$$ S(q) = \\frac{{1}}{{N}} \\sum_{{ij}} e^{{i q (r_i - r_j)}} \\langle S_i \\cdot S_j \\rangle $$",
            "$$ A(k, \\omega) = -\\frac{{1}}{{\\pi}} \\mathrm{{Im}} \\, G(k, \\omega) $$",
        ],
        sections=["Introduction", "Model and method", "Results", "Phase diagram",
                  "Discussion", "Conclusion"],
    ),
}


def paper(rng: random.Random, field: Field) -> list[str]:
    """One paper: title, abstract, numbered section headings, paragraph lines, display equations."""
    w = _Writer(rng, field.topic)

    def sentence() -> str:
        return w.fill(w.pick(field.sentences), SYM=w.pick(field.symbols), **_values(rng))

    title = f"{w.pick(field.topic.adjectives).capitalize()} {w.pick(field.topic.nouns)} and the {w.pick(field.topic.nouns)}"
    lines = [title, "Abstract", " ".join(sentence() for _ in range(rng.randint(3, 5)))]
    for number, section in enumerate(field.sections[: rng.randint(2, 4)], 1):
        lines.append(f"{number} {section}")
        for _ in range(rng.randint(1, 2)):
            lines.append(" ".join(sentence() for _ in range(rng.randint(2, 5))))
            if rng.random() < 0.5:
                lines.append(w.pick(field.equations).format(**_values(rng)))
    return lines


# --------------------------------------------------------------------------------------------------
# Domains and writing
# --------------------------------------------------------------------------------------------------


def _wiki_document(topic: Topic) -> Callable[[random.Random], list[str]]:
    return lambda rng: wiki_article(_Writer(rng, topic))


def _paper_document(field: Field) -> Callable[[random.Random], list[str]]:
    return lambda rng: paper(rng, field)


#: Demo domain name -> generator of one document as a list of lines.
DOMAINS: dict[str, Callable[[random.Random], list[str]]] = {
    **{name: _wiki_document(topic) for name, topic in WIKI_TOPICS.items()},
    **{name: _paper_document(field) for name, field in FIELDS.items()},
}


def domain_split_text(domain: str, split: str, n_documents: int, seed: int) -> str:
    """A split in the M2D2 layout: one paragraph per line, a blank line after every document."""
    rng = random.Random(derive_seed(seed, "demo", domain, split))
    make = DOMAINS[domain]
    lines: list[str] = []
    for _ in range(n_documents):
        lines.extend(make(rng))
        lines.append("")
    return "\n".join(lines) + "\n"


def source_corpus_lines(n_documents: int, seed: int) -> list[str]:
    """The web-like source corpus as JSON lines ``{"id": ..., "text": ...}``."""
    rng = random.Random(derive_seed(seed, "demo", "source", SOURCE_NAME))
    return [
        json.dumps({"id": f"{SOURCE_NAME}-{i:06d}", "text": source_document(rng)}, ensure_ascii=False)
        for i in range(n_documents)
    ]


def output_paths(root: str | Path, archived_domains: Sequence[str] = ()) -> dict[str, list[str]]:
    """Every file ``generate`` writes, for a workflow rule's outputs."""
    root = Path(root)
    splits, archives = [], []
    for domain in DOMAINS:
        if domain in archived_domains:
            archives.append(str(root / "m2d2" / f"{domain}.tar.gz"))
        else:
            splits.extend(str(root / "m2d2" / domain / f"{s}.txt") for s in SPLITS)
    return {
        "sources": [str(root / "sources" / f"{SOURCE_NAME}.jsonl")],
        "splits": splits,
        "archives": archives,
    }


def _write_archive(path: Path, domain: str, texts: Mapping[str, str]) -> None:
    """A reproducible ``<domain>.tar.gz`` holding ``<domain>/<split>.txt`` (fixed mtimes and owners)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for split, text in texts.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"{domain}/{split}.txt")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    with atomic_open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(buffer.getvalue())


def generate(
    root: str | Path,
    *,
    seed: int,
    source_documents: int,
    domain_documents: Mapping[str, int],
    archived_domains: Sequence[str] = (),
) -> dict[str, list[str]]:
    """Write the demo tree under ``root``: ``m2d2/<domain>/{split}.txt`` (or ``m2d2/<domain>.tar.gz``)
    and ``sources/webtext.jsonl``. Returns the paths written (as ``output_paths``)."""
    root = Path(root)
    for domain in DOMAINS:
        texts = {
            split: domain_split_text(domain, split, domain_documents[split], seed) for split in SPLITS
        }
        if domain in archived_domains:
            _write_archive(root / "m2d2" / f"{domain}.tar.gz", domain, texts)
        else:
            for split, text in texts.items():
                write_text(root / "m2d2" / domain / f"{split}.txt", text)
        log.info("demo domain %s written (%s)", domain, "archive" if domain in archived_domains else "directory")
    write_text(root / "sources" / f"{SOURCE_NAME}.jsonl", "\n".join(source_corpus_lines(source_documents, seed)) + "\n")
    log.info("demo source corpus %s: %d documents", SOURCE_NAME, source_documents)
    return output_paths(root, archived_domains)
