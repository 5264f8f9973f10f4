"""Named corpora: where their files are, and how a user online fetches Multi30k.

Lookup order for the data directory: ``data.data_dir`` in the config, ``$GAPLESS_DATA``,
``../shared/data`` (from the working directory, then from the repository), then the download
cache ``$GAPLESS_CACHE`` (default ``~/.cache/gapless``). A corpus that is a directory path is read
as ``<split>.<lang>`` files.
"""

from __future__ import annotations

import gzip
import logging
import os
import random
import shutil
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .data import CorpusError
from .verify import digest

log = logging.getLogger(__name__)

MULTI30K_URL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw"
# our split name -> upstream file stem (data/task1/raw/<stem>.<lang>.gz)
MULTI30K_UPSTREAM = {
    "train": "train",
    "valid": "val",
    "test2016": "test_2016_flickr",
    "test2017": "test_2017_flickr",
    "mscoco2017": "test_2017_mscoco",
    "test2018": "test_2018_flickr",
}
# sha256 of the unzipped official files (shared/data/multi30k/SOURCE.md)
MULTI30K_SHA256 = {
    "mscoco2017.de": "58277df3c75f92f7145a11b910b553d1cf82c439249d4dc237c899609eafac22",
    "mscoco2017.en": "43051fdfa86fd5395182e718a94ca67b1b227b9f7c79596ff0f6b813216981d2",
    "mscoco2017.fr": "39cde3f43f32b0a6bf29ce4917a46329ff32e53070c2fac87506695a740ae0a0",
    "test2016.cs": "45adb85f688de8407fddcbe1b36dca15d12aab868149b337e2576f2d6d2ff8d8",
    "test2016.de": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
    "test2016.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    "test2016.fr": "cb3160d69b002bb638e66cc7612fcd56cb0af82eadc9c142dedc438afb885ef6",
    "test2017.de": "c3078bc3b36808bf9d20eb2347ed6137016179ef59ec0d2b9b8ecc3fb2880081",
    "test2017.en": "ce1450ddc5ab0834502579d77a170849952e15a2938b34cc503bdc25ebb4fb98",
    "test2017.fr": "6f3764e31dac41e9455e612958bcfd4e877c5e15cd66df2c2b2be6d9bd83e5b6",
    "test2018.cs": "1db59fe6980c9b3f9bade65122a985e71150214837d76f4768a5a8384c0b2dc7",
    "test2018.de": "39fcc8b3331d76fb42d648d019c6898b0d5e58baac87bc2a0bb93f44ec8db207",
    "test2018.en": "4e585c2dd525911a6ea7730e9d0b516239af3f1b1ffae6a2130223cfb639f25e",
    "test2018.fr": "234b4a887da0da4801a3e2c6f21336231ff7dd46daeb80cfa1b551c8bbb78239",
    "train.cs": "2be68b38c8d586ff4f54eb13cc6e1baaaa053695b3f070d3038303a47f2268da",
    "train.de": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
    "train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "train.fr": "5925a3c18f1587b6b54b87743106e6e8ab93618edb6f65d19eac0621f853a10d",
    "valid.cs": "d53827e469b0a1ca8d57e9e26b2b64c4bc4b33f5479c7b03ae87ae5c882c3e33",
    "valid.de": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
    "valid.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    "valid.fr": "5304e444d842e962b2dda4d816b70b22a1765b15401642b7ca37a67477e708dc",
}


@dataclass
class Corpus:
    """A named corpus: a folder of ``<split>.<lang>`` files (with per-file exceptions)."""

    name: str
    folder: str
    langs: tuple[str, ...]
    splits: tuple[str, ...]
    rename: dict[str, str] = field(default_factory=dict)  # "<split>.<lang>" -> file name
    downloadable: bool = False

    def filename(self, split: str, lang: str) -> str:
        key = f"{split}.{lang}"
        return self.rename.get(key, key)


CORPORA = {
    c.name: c
    for c in [
        Corpus(
            "multi30k",
            "multi30k",
            ("en", "de", "fr", "cs"),
            ("train", "valid", "test2016", "test2017", "mscoco2017", "test2018"),
            downloadable=True,
        ),
        Corpus(
            "multidomain-de-en",
            "multidomain-de-en",
            ("de", "en"),
            tuple(
                f"{d}.{s}"
                for d in ("koran", "it", "law", "medical")
                for s in ("train", "valid", "test")
            ),
        ),
        Corpus(
            "msctd-zh-en",
            "msctd-zh-en",
            ("zh", "en"),
            ("train", "valid", "test"),
            rename={"train.en": "train.tok.lc.en"},  # only a tokenised, lowercased train side
        ),
        Corpus("wmt-zh-en", "wmt-zh-en", ("zh", "en"), ("train", "valid", "test", "test-enzh")),
        Corpus("msctd-de-en", "msctd-de-en", ("de", "en"), ("train", "valid", "test")),
        Corpus(
            "synthetic",
            "synthetic",
            ("de", "en"),
            ("train", "valid", "test2016"),
        ),
    ]
}


def cache_dir() -> Path:
    return Path(os.environ.get("GAPLESS_CACHE", Path.home() / ".cache" / "gapless"))


def data_dirs(explicit: str | None = None) -> list[Path]:
    """Candidate data directories, most specific first."""
    if explicit:
        return [Path(explicit)]
    dirs = []
    if os.environ.get("GAPLESS_DATA"):
        dirs.append(Path(os.environ["GAPLESS_DATA"]))
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = (base / ".." / "shared" / "data").resolve()
        if candidate.is_dir() and candidate not in dirs:
            dirs.append(candidate)
    dirs.append(cache_dir())
    return dirs


def shared_data_dir() -> Path | None:
    """The shared corpus directory if one is present (tests skip without it)."""
    for d in data_dirs():
        if d != cache_dir() and d.is_dir():
            return d
    return None


def _or_gz(path: Path) -> Path:
    """``path``, or ``path.gz`` when only that exists (read decompressed)."""
    gz = path.with_name(path.name + ".gz")
    return gz if not path.exists() and gz.is_file() else path


def split_paths(
    corpus: str, split: str, src: str, tgt: str, data_dir: str | None = None, download=True
) -> tuple[Path, Path]:
    """(source file, target file) of one split, fetching Multi30k when allowed and missing; a
    ``.gz`` file stands in for a missing plain one."""
    if corpus not in CORPORA:
        folder = Path(corpus)
        if not folder.is_dir():
            raise CorpusError(
                f"unknown corpus {corpus!r}: neither a named corpus "
                f"({', '.join(CORPORA)}) nor a directory"
            )
        return _or_gz(folder / f"{split}.{src}"), _or_gz(folder / f"{split}.{tgt}")
    spec = CORPORA[corpus]
    for lang in (src, tgt):
        if lang not in spec.langs:
            raise CorpusError(f"{corpus}: unknown language {lang!r} (has {', '.join(spec.langs)})")
    if split not in spec.splits:
        raise CorpusError(f"{corpus}: unknown split {split!r} (has {', '.join(spec.splits)})")
    names = (spec.filename(split, src), spec.filename(split, tgt))
    for d in data_dirs(data_dir):
        paths = tuple(_or_gz(d / spec.folder / n) for n in names)
        if all(p.is_file() for p in paths):
            return paths
    if spec.name == "synthetic":
        folder = cache_dir() / "synthetic"
        write_synthetic(folder)
        return folder / names[0], folder / names[1]
    if spec.downloadable and download:
        folder = cache_dir() / spec.folder
        for lang in (src, tgt):
            download_multi30k(split, lang, folder)
        return folder / names[0], folder / names[1]
    tried = ", ".join(str(d / spec.folder) for d in data_dirs(data_dir))
    raise CorpusError(f"{corpus}: files {names[0]}, {names[1]} not found (looked in {tried})")


def corpus_available(corpus: str, split: str, src: str, tgt: str, data_dir=None) -> bool:
    try:
        split_paths(corpus, split, src, tgt, data_dir, download=False)
        return True
    except CorpusError:
        return False


# ----------------------------------------------------------------------------------------------
# download (users online); tested against a loopback server


sha256 = digest  # of a downloaded file, checked against the expected one


def download_multi30k(
    split: str, lang: str, folder: Path, base_url: str | None = None, checksums=None
) -> Path:
    """Fetch ``<upstream>.<lang>.gz`` from the official repository, unzip, verify sha256, and
    move into place atomically. A checksum mismatch removes the file and raises."""
    base_url = base_url or os.environ.get("GAPLESS_MULTI30K_URL", MULTI30K_URL)
    checksums = MULTI30K_SHA256 if checksums is None else checksums
    name = f"{split}.{lang}"
    target = folder / name
    if target.is_file() and checksums.get(name) in (None, sha256(target)):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    url = f"{base_url.rstrip('/')}/{MULTI30K_UPSTREAM[split]}.{lang}.gz"
    tmp = folder / f".{name}.part"
    log.info("downloading %s", url)
    try:
        with (
            urllib.request.urlopen(url, timeout=60) as resp,
            gzip.GzipFile(fileobj=resp) as gz,
            open(tmp, "wb") as out,
        ):
            shutil.copyfileobj(gz, out)
    except (OSError, EOFError) as exc:
        tmp.unlink(missing_ok=True)
        raise CorpusError(f"could not download {url}: {exc}") from exc
    want = checksums.get(name)
    if want is not None and sha256(tmp) != want:
        tmp.unlink(missing_ok=True)
        raise CorpusError(f"{url}: sha256 mismatch (expected {want}); file discarded")
    tmp.replace(target)
    return target


# ----------------------------------------------------------------------------------------------
# a generated corpus for machines with neither the shared data nor internet

_SUBJECTS = [
    ("ein Mann", "a man", "s"), ("eine Frau", "a woman", "s"), ("ein Kind", "a child", "s"),
    ("ein Hund", "a dog", "s"), ("ein Junge", "a boy", "s"), ("ein Mädchen", "a girl", "s"),
    ("zwei Männer", "two men", "p"), ("drei Frauen", "three women", "p"),
    ("zwei Hunde", "two dogs", "p"), ("einige Kinder", "some children", "p"),
    ("der Arbeiter", "the worker", "s"), ("die Musikerin", "the musician", "s"),
]
_ADJ = [
    ("", ""), ("junge ", "young "), ("alte ", "old "), ("kleine ", "little "),
    ("glückliche ", "happy "), ("müde ", "tired "),
]
_VERBS = [
    ("läuft", "laufen", "runs", "run"), ("spielt", "spielen", "plays", "play"),
    ("sitzt", "sitzen", "sits", "sit"), ("steht", "stehen", "stands", "stand"),
    ("wartet", "warten", "waits", "wait"), ("lacht", "lachen", "laughs", "laugh"),
    ("tanzt", "tanzen", "dances", "dance"), ("arbeitet", "arbeiten", "works", "work"),
]
_PLACES = [
    ("im Park", "in the park"), ("auf der Straße", "on the street"), ("am Strand", "on the beach"),
    ("im Schnee", "in the snow"), ("vor einem Haus", "in front of a house"),
    ("neben dem Fluss", "next to the river"), ("in der Stadt", "in the city"),
    ("auf einer Bühne", "on a stage"), ("im Wasser", "in the water"), ("", ""),
]
_TIMES = [("", ""), ("heute ", "today "), ("am Abend ", "in the evening "), ("oft ", "often ")]


def synthetic_pair(rng: random.Random) -> tuple[str, str]:
    """One German-English pair from a small grammar (agreement, adjectives, places)."""
    (s_de, s_en, num), (a_de, a_en) = rng.choice(_SUBJECTS), rng.choice(_ADJ)
    v_de_s, v_de_p, v_en_s, v_en_p = rng.choice(_VERBS)
    (p_de, p_en), (t_de, t_en) = rng.choice(_PLACES), rng.choice(_TIMES)
    det, noun = s_de.split(" ", 1)
    det_en, noun_en = s_en.split(" ", 1)
    de_subject = f"{det} {a_de}{noun}".replace("  ", " ")
    en_subject = f"{det_en} {a_en}{noun_en}".replace("  ", " ")
    if det_en == "a" and a_en[:1] in "aeiou" and a_en:
        en_subject = en_subject.replace("a ", "an ", 1)
    v_de, v_en = (v_de_s, v_en_s) if num == "s" else (v_de_p, v_en_p)
    de = " ".join(x for x in (de_subject, v_de, t_de.strip(), p_de) if x) + "."
    en = " ".join(x for x in (en_subject, v_en, p_en, t_en.strip()) if x) + "."
    return de[0].upper() + de[1:], en[0].upper() + en[1:]


def write_synthetic(folder: Path, sizes=(("train", 20000), ("valid", 500), ("test2016", 500))):
    """Write the generated corpus (deterministic) unless it is already there."""
    if all((folder / f"{s}.{lang}").is_file() for s, _ in sizes for lang in ("de", "en")):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1234)
    for split, n in sizes:
        pairs = [synthetic_pair(rng) for _ in range(n)]
        for lang, col in (("de", 0), ("en", 1)):
            tmp = folder / f".{split}.{lang}.part"
            tmp.write_text("".join(p[col] + "\n" for p in pairs), encoding="utf-8")
            tmp.replace(folder / f"{split}.{lang}")
    return folder
