"""gapless.corpora: data directories, the synthetic corpus, the Multi30k download (loopback)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import random
import threading
from pathlib import Path

import pytest

from gapless import corpora
from gapless.corpora import (
    MULTI30K_SHA256,
    MULTI30K_UPSTREAM,
    data_dirs,
    download_multi30k,
    shared_data_dir,
    split_paths,
    synthetic_pair,
    write_synthetic,
)
from gapless.data import CorpusError, read_parallel

SHARED = shared_data_dir()
SHARED_MULTI30K = SHARED / "multi30k" if SHARED is not None else None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields (base_url, folder)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/data/task1/raw", www
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GAPLESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GAPLESS_MULTI30K_URL", raising=False)


def _publish(www: Path, split: str, lang: str, data: bytes) -> Path:
    """Put ``data`` gzipped under the upstream name, as the official repository has it."""
    folder = www / "data" / "task1" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{MULTI30K_UPSTREAM[split]}.{lang}.gz"
    path.write_bytes(gzip.compress(data))
    return path


def test_download_success(server, tmp_path):
    base, www = server
    text = "Ein Hund läuft.\nZwei Männer spielen.\n".encode()
    _publish(www, "test2016", "de", text)
    digest = hashlib.sha256(text).hexdigest()
    folder = tmp_path / "out"
    got = download_multi30k(
        "test2016", "de", folder, base_url=base, checksums={"test2016.de": digest}
    )
    assert got == folder / "test2016.de"
    assert got.read_bytes() == text
    assert sorted(p.name for p in folder.iterdir()) == ["test2016.de"]  # no .part left
    # present and verified: no second request (the server no longer has the file)
    (www / "data" / "task1" / "raw" / "test_2016_flickr.de.gz").unlink()
    assert (
        download_multi30k(
            "test2016", "de", folder, base_url=base, checksums={"test2016.de": digest}
        )
        == got
    )


def test_download_checksum_mismatch_leaves_nothing(server, tmp_path):
    base, www = server
    _publish(www, "valid", "en", b"A tampered file.\n")
    folder = tmp_path / "out"
    with pytest.raises(CorpusError, match="sha256 mismatch"):
        download_multi30k("valid", "en", folder, base_url=base, checksums={"valid.en": "0" * 64})
    assert not (folder / "valid.en").exists()
    assert not list(folder.iterdir())


def test_download_corrupt_file_replaced(server, tmp_path):
    """A local file with a wrong checksum is fetched again."""
    base, www = server
    text = b"Right.\n"
    _publish(www, "train", "fr", text)
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "train.fr").write_bytes(b"Wrong.\n")
    download_multi30k(
        "train",
        "fr",
        folder,
        base_url=base,
        checksums={"train.fr": hashlib.sha256(text).hexdigest()},
    )
    assert (folder / "train.fr").read_bytes() == text


def test_download_errors_are_corpus_errors(server, tmp_path):
    base, www = server
    folder = tmp_path / "out"
    with pytest.raises(CorpusError, match=r"could not download .*test_2017_flickr\.de\.gz"):
        download_multi30k("test2017", "de", folder, base_url=base, checksums={})
    (www / "data" / "task1" / "raw").mkdir(parents=True, exist_ok=True)
    (www / "data" / "task1" / "raw" / "test_2017_flickr.de.gz").write_bytes(b"not gzip at all")
    with pytest.raises(CorpusError, match="could not download"):
        download_multi30k("test2017", "de", folder, base_url=base, checksums={})
    assert not list(folder.iterdir())


def test_split_paths_downloads_into_cache(server, tmp_path, monkeypatch):
    """A named corpus not found locally is fetched into $GAPLESS_CACHE (URL from the env)."""
    base, www = server
    de, en = b"Ein Hund.\nEine Katze.\n", b"A dog.\nA cat.\n"
    _publish(www, "test2016", "de", de)
    _publish(www, "test2016", "en", en)
    monkeypatch.setenv("GAPLESS_MULTI30K_URL", base)
    monkeypatch.setattr(
        corpora,
        "MULTI30K_SHA256",
        {
            "test2016.de": hashlib.sha256(de).hexdigest(),
            "test2016.en": hashlib.sha256(en).hexdigest(),
        },
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    src, tgt = split_paths("multi30k", "test2016", "de", "en", data_dir=str(empty))
    assert (src, tgt) == (
        tmp_path / "cache" / "multi30k" / "test2016.de",
        tmp_path / "cache" / "multi30k" / "test2016.en",
    )
    assert read_parallel(src, tgt) == (["Ein Hund.", "Eine Katze."], ["A dog.", "A cat."])


@pytest.mark.data
@pytest.mark.skipif(
    SHARED_MULTI30K is None or not (SHARED_MULTI30K / "valid.de").is_file(),
    reason="shared Multi30k data not present",
)
def test_download_real_files_verify_with_real_table(server, tmp_path):
    base, www = server
    folder = tmp_path / "out"
    for split, lang in (("valid", "de"), ("valid", "en"), ("mscoco2017", "fr")):
        original = (SHARED_MULTI30K / f"{split}.{lang}").read_bytes()
        _publish(www, split, lang, original)
        got = download_multi30k(split, lang, folder, base_url=base)  # the real MULTI30K_SHA256
        assert got.read_bytes() == original
    # and the table rejects a one-byte change
    changed = bytearray((SHARED_MULTI30K / "test2016.en").read_bytes())
    changed[0] ^= 0x20
    _publish(www, "test2016", "en", bytes(changed))
    with pytest.raises(CorpusError, match="sha256 mismatch"):
        download_multi30k("test2016", "en", folder, base_url=base)
    assert not (folder / "test2016.en").exists()


@pytest.mark.data
@pytest.mark.skipif(SHARED_MULTI30K is None, reason="shared Multi30k data not present")
def test_shared_multi30k_matches_table():
    for name, digest in MULTI30K_SHA256.items():
        path = SHARED_MULTI30K / name
        if path.is_file():  # test2018 is held out of the shared copy
            assert corpora.sha256(path) == digest, name


def test_sha256_table_covers_upstream_names():
    for name in MULTI30K_SHA256:
        split, lang = name.split(".")
        assert split in MULTI30K_UPSTREAM and lang in corpora.CORPORA["multi30k"].langs


# ----------------------------------------------------------------------------------------------
# data directories


def test_data_dirs_explicit_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("GAPLESS_DATA", str(tmp_path / "env"))
    assert data_dirs(str(tmp_path / "mine")) == [tmp_path / "mine"]


def test_data_dirs_env_first_cache_last(tmp_path, monkeypatch):
    monkeypatch.setenv("GAPLESS_DATA", str(tmp_path / "env"))
    dirs = data_dirs()
    assert dirs[0] == tmp_path / "env"
    assert dirs[-1] == tmp_path / "cache"
    monkeypatch.delenv("GAPLESS_DATA")
    assert tmp_path / "env" not in data_dirs()


def test_split_paths_uses_gapless_data(tmp_path, monkeypatch):
    root = tmp_path / "env"
    (root / "msctd-zh-en").mkdir(parents=True)
    for name in ("train.zh", "train.tok.lc.en"):  # the per-file rename of this corpus
        (root / "msctd-zh-en" / name).write_text("x\n")
    monkeypatch.setenv("GAPLESS_DATA", str(root))
    assert split_paths("msctd-zh-en", "train", "zh", "en", download=False) == (
        root / "msctd-zh-en" / "train.zh",
        root / "msctd-zh-en" / "train.tok.lc.en",
    )
    assert shared_data_dir() == root
    # an explicit data_dir that lacks the files: not found (and GAPLESS_DATA is not consulted)
    with pytest.raises(CorpusError, match="not found"):
        split_paths(
            "msctd-zh-en", "train", "zh", "en", data_dir=str(tmp_path / "other"), download=False
        )


# ----------------------------------------------------------------------------------------------
# the synthetic corpus


def test_synthetic_deterministic_and_aligned(tmp_path):
    a = write_synthetic(tmp_path / "a", sizes=(("train", 300), ("valid", 20)))
    b = write_synthetic(tmp_path / "b", sizes=(("train", 300), ("valid", 20)))
    for name in ("train.de", "train.en", "valid.de", "valid.en"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    de, en = read_parallel(a / "train.de", a / "train.en")
    assert len(de) == len(en) == 300
    assert all(x.strip() and x.endswith(".") for x in de + en)
    assert not list(a.glob(".*"))  # no temp files left


def test_synthetic_pair_grammar():
    rng = random.Random(0)
    pairs = [synthetic_pair(rng) for _ in range(2000)]
    for de, en in pairs:
        assert "  " not in de and "  " not in en
        assert de[0].isupper() and en[0].isupper()
        assert not en.startswith("A old") and not en.startswith("A a")  # "an old man"
    assert any(en.startswith("An old") for _, en in pairs)
    assert len(set(pairs)) > 1000


def test_split_paths_synthetic_goes_to_cache(tmp_path):
    src, tgt = split_paths("synthetic", "valid", "de", "en", data_dir=str(tmp_path / "none"))
    assert src == tmp_path / "cache" / "synthetic" / "valid.de"
    de, en = read_parallel(src, tgt)
    assert len(de) == len(en) == 500
    again = split_paths("synthetic", "valid", "de", "en", data_dir=str(tmp_path / "none"))
    assert again == (src, tgt) and read_parallel(*again) == (de, en)
