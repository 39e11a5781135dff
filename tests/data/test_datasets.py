"""Tests for lmforge.data.datasets: offline resolution, the cache, downloads from file:// URLs."""

import dataclasses
import gzip
import hashlib
import io
import sysconfig
import tarfile
import time
from pathlib import Path

import pytest

from lmforge.data import datasets
from lmforge.data.corpus import open_source
from lmforge.data.datasets import DATASETS, cache_dir, resolve_dataset
from lmforge.errors import ConfigError, DataError


@pytest.mark.parametrize(
    "name, filename",
    [
        ("tinyshakespeare", "tinyshakespeare.txt"),
        ("imdb", "imdb-50k.csv.gz"),
        ("wine-reviews", "winemag-130k-v2.first2191.csv.gz"),
        ("eli5", "eli5-alce-1000.json"),
    ],
)
def test_named_datasets_resolve_to_the_data_dir(name, filename):
    path = resolve_dataset(name)
    assert path.name == filename and path.is_file()
    assert filename in DATASETS[name].filenames


def test_shared_files_match_the_registered_sha256():
    for name in ("tinyshakespeare", "eli5"):
        data = resolve_dataset(name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == DATASETS[name].sha256
    wine = gzip.decompress(resolve_dataset("wine-reviews").read_bytes())
    assert hashlib.sha256(wine).hexdigest() == DATASETS["wine-reviews"].sha256


def test_python_stdlib_is_the_running_pythons_library():
    assert resolve_dataset("python-stdlib") == Path(sysconfig.get_paths()["stdlib"])
    assert DATASETS["python-stdlib"].url is None


def test_every_dataset_says_what_it_is():
    assert set(DATASETS) == {"python-stdlib", "tinyshakespeare", "imdb", "wine-reviews", "eli5"}
    for name, info in DATASETS.items():
        assert info.name == name and info.about
        assert (info.url is None) == (info.sha256 is None)
    assert "2,191" in DATASETS["wine-reviews"].about


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown dataset 'shakespeare'.*tinyshakespeare, imdb"):
        resolve_dataset("shakespeare")


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("LMFORGE_CACHE_DIR")
    assert cache_dir() == Path.home() / ".cache" / "lmforge"


def _serve(monkeypatch, tmp_path, name: str, data: bytes, filename: str, sha256=None) -> None:
    """Make dataset `name` download `data` from a file:// URL; hide the shared data dir."""
    remote = tmp_path / "remote" / filename
    remote.parent.mkdir(parents=True, exist_ok=True)
    remote.write_bytes(data)
    info = dataclasses.replace(
        DATASETS[name], url=remote.as_uri(), sha256=sha256 or hashlib.sha256(data).hexdigest()
    )
    monkeypatch.setitem(DATASETS, name, info)
    (tmp_path / "empty").mkdir(exist_ok=True)
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(tmp_path / "empty"))


def test_download_is_verified_cached_and_reused(tmp_path, monkeypatch):
    _serve(monkeypatch, tmp_path, "tinyshakespeare", b"First Citizen:\nSpeak.\n", "input.txt")
    path = resolve_dataset("tinyshakespeare")
    assert path == tmp_path / "cache" / "datasets" / "tinyshakespeare" / "input.txt"
    assert path.read_bytes() == b"First Citizen:\nSpeak.\n"
    assert [p.name for p in path.parent.iterdir()] == ["input.txt"]  # no temporary left over
    (tmp_path / "remote" / "input.txt").unlink()  # a second call must not download again
    assert resolve_dataset("tinyshakespeare") == path
    assert "".join(open_source("tinyshakespeare").iter_chunks()) == "First Citizen:\nSpeak.\n"


def test_data_dir_wins_over_the_cache(tmp_path, monkeypatch):
    _serve(monkeypatch, tmp_path, "eli5", b"[]", "eli5.json")
    resolve_dataset("eli5")
    (tmp_path / "empty" / "eli5-alce-1000.json").write_text('[{"answer": "local"}]')
    assert resolve_dataset("eli5") == tmp_path / "empty" / "eli5-alce-1000.json"


def test_sha256_mismatch_deletes_the_download(tmp_path, monkeypatch):
    _serve(monkeypatch, tmp_path, "eli5", b"[]", "eli5.json", sha256="0" * 64)
    with pytest.raises(
        DataError, match=f"expected {'0' * 64}, got {hashlib.sha256(b'[]').hexdigest()}"
    ):
        resolve_dataset("eli5")
    assert list((tmp_path / "cache" / "datasets" / "eli5").iterdir()) == []


def test_tarball_is_extracted_into_the_cache(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member, text in [
            ("aclImdb/README", "readme"),
            ("aclImdb/train/pos/0_9.txt", "loved it"),
            ("aclImdb/train/neg/0_1.txt", "hated it"),
            ("aclImdb/test/pos/0_8.txt", "liked it"),
            ("aclImdb/test/neg/0_3.txt", "meh"),
        ]:
            data = text.encode()
            tarinfo = tarfile.TarInfo(member)
            tarinfo.size = len(data)
            tar.addfile(tarinfo, io.BytesIO(data))
    _serve(monkeypatch, tmp_path, "imdb", buffer.getvalue(), "aclImdb_v1.tar.gz")
    path = resolve_dataset("imdb")
    assert path == tmp_path / "cache" / "datasets" / "imdb" / "aclImdb"
    assert sorted(p.name for p in path.parent.iterdir()) == ["aclImdb"]  # tarball removed
    docs = list(open_source("imdb").iter_documents())
    assert sorted((d.split, d.label, d.text) for d in docs) == [
        ("test", "neg", "meh"),
        ("test", "pos", "liked it"),
        ("train", "neg", "hated it"),
        ("train", "pos", "loved it"),
    ]


def test_failed_download_names_the_url_and_the_fix(tmp_path, monkeypatch):
    url = "http://127.0.0.1:9/nope"
    monkeypatch.setitem(DATASETS, "eli5", dataclasses.replace(DATASETS["eli5"], url=url))
    monkeypatch.setattr(datasets, "DOWNLOAD_TIMEOUT_S", 2.0)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(tmp_path / "empty"))
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        open_source("eli5")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert url in message and "LMFORGE_DATA_DIR" in message and "eli5-alce-1000.json" in message
    assert "\n" not in message
