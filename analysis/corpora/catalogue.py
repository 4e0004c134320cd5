"""The domain names of the M2D2 release, and which portion (Wikipedia or S2ORC) each belongs to.

Names are the release's own directory names: Wikipedia domains are ``L1`` or ``L1__L2`` with the
release's typos kept (``General_referece``, ``Human_activites``); S2ORC domains are arXiv categories,
including retired ones (``supr-con``, ``atom-ph``) and the ``*_l1`` aggregates.
"""

from __future__ import annotations

import difflib
from typing import Iterable, Mapping

#: The two portions of the release, as ``portion`` names them.
WIKI, S2ORC = PORTIONS = ("wiki", "s2orc")

_WIKI_TREE = {
    "Culture_and_the_arts": [
        "Culture_and_Humanities", "Games_and_Toys", "Mass_media", "Performing_arts",
        "Sports_and_Recreation", "The_arts_and_Entertainment", "Visual_arts",
    ],
    "General_referece": ["Further_research_tools_and_topics", "Reference_works"],
    "Health_and_fitness": [
        "Exercise", "Health_science", "Human_medicine", "Nutrition", "Public_health", "Self_care",
    ],
    "History_and_events": ["By_continent", "By_period", "By_region"],
    "Human_activites": ["Human_activities", "Impact_of_human_activity"],
    "Mathematics_and_logic": ["Fields_of_mathematics", "Logic", "Mathematics"],
    "Natural_and_physical_sciences": ["Biology", "Earth_sciences", "Nature", "Physical_sciences"],
    "Philosophy_and_thinking": ["Philosophy", "Thinking"],
    "Religion_and_belief_systems": ["Allah", "Belief_systems", "Major_beliefs_of_the_world"],
    "Society_and_social_sciences": ["Social_sciences", "Society"],
    "Technology_and_applied_sciences": ["Agriculture", "Computing", "Engineering", "Transport"],
}

# Two top-level Wikipedia portals the release keeps as domains of their own.
_WIKI_EXTRA = ["Art", "Philosophy"]

WIKI_DOMAINS: tuple[str, ...] = tuple(
    sorted(
        _WIKI_EXTRA
        + list(_WIKI_TREE)
        + [f"{top}__{sub}" for top, subs in _WIKI_TREE.items() for sub in subs]
    )
)

_ARXIV = {
    "astro-ph": ["CO", "EP", "GA", "HE", "IM", "SR"],
    "cond-mat": [
        "dis-nn", "mes-hall", "mtrl-sci", "other", "quant-gas", "soft", "stat-mech", "str-el",
        "supr-con",
    ],
    "cs": [
        "AI", "AR", "CC", "CE", "CG", "CL", "CR", "CV", "CY", "DB", "DC", "DL", "DM", "DS", "ET",
        "FL", "GL", "GR", "GT", "HC", "IR", "IT", "LG", "LO", "MA", "MM", "MS", "NA", "NE", "NI",
        "OH", "OS", "PF", "PL", "RO", "SC", "SD", "SE", "SI", "SY",
    ],
    "econ": ["EM", "GN", "TH"],
    "eess": ["AS", "IV", "SP", "SY"],
    "math": [
        "AC", "AG", "AP", "AT", "CA", "CO", "CT", "CV", "DG", "DS", "FA", "GM", "GN", "GR", "GT",
        "HO", "IT", "KT", "LO", "MG", "MP", "NA", "NT", "OA", "OC", "PR", "QA", "RA", "RT", "SG",
        "SP", "ST",
    ],
    "nlin": ["AO", "CD", "CG", "PS", "SI"],
    "physics": [
        "acc-ph", "ao-ph", "app-ph", "atm-clus", "atom-ph", "bio-ph", "chem-ph", "class-ph",
        "comp-ph", "data-an", "ed-ph", "flu-dyn", "gen-ph", "geo-ph", "hist-ph", "ins-det",
        "med-ph", "optics", "plasm-ph", "pop-ph", "soc-ph", "space-ph",
    ],
    "q-bio": ["BM", "CB", "GN", "MN", "NC", "OT", "PE", "QM", "SC", "TO"],
    "q-fin": ["CP", "EC", "GN", "MF", "PM", "PR", "RM", "ST", "TR"],
    "stat": ["AP", "CO", "ME", "ML", "OT", "TH"],
}

# Archives without subcategories, retired arXiv archives, and the release's L1 aggregates.
_S2ORC_FLAT = [
    "alg-geom", "ao-sci", "astro-ph", "atom-ph", "bayes-an", "chao-dyn", "chem-ph", "cmp-lg",
    "comp-gas", "cond-mat", "dg-ga", "funct-an", "gr-qc", "hep-ex", "hep-lat", "hep-ph", "hep-th",
    "math-ph", "mtrl-th", "nucl-ex", "nucl-th", "patt-sol", "plasm-ph", "q-alg", "q-bio",
    "quant-ph", "solv-int", "supr-con",
    "astro-ph_l1", "cond-mat_l1", "cs_l1", "econ_l1", "eess_l1", "math_l1", "nlin_l1",
    "physics_l1", "q-bio_l1", "q-fin_l1", "stat_l1",
]

S2ORC_DOMAINS: tuple[str, ...] = tuple(
    sorted(_S2ORC_FLAT + [f"{arch}.{sub}" for arch, subs in _ARXIV.items() for sub in subs])
)

M2D2_DOMAINS: frozenset[str] = frozenset(WIKI_DOMAINS + S2ORC_DOMAINS)


def portion(domain: str, overrides: Mapping[str, str] | None = None) -> str:
    """``"wiki"`` or ``"s2orc"`` for a domain name.

    Overrides (from the config) win; then the release catalogue; then the naming convention of the
    release: Wikipedia names start with a capital letter, arXiv categories do not.
    """
    if overrides and domain in overrides:
        return overrides[domain]
    if domain in WIKI_DOMAINS:
        return WIKI
    if domain in S2ORC_DOMAINS:
        return S2ORC
    return WIKI if domain[:1].isupper() else S2ORC


def close_matches(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Candidates that look like a misspelling of ``name`` (for 'did you mean' hints)."""
    return difflib.get_close_matches(name, sorted(set(candidates)), n=n, cutoff=0.6)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A ' (did you mean ...?)' suffix, or an empty string when nothing is close."""
    matches = close_matches(name, candidates)
    return f" (did you mean {', '.join(repr(m) for m in matches)}?)" if matches else ""
