"""Named public datasets: where each comes from and how it is found, downloaded and cached.

Resolution order: $LMFORGE_DATA_DIR (first listed file name that exists), then the cache, then a
download that is checked against its sha256. Tests never download: they point LMFORGE_DATA_DIR
at shared/data.
"""

import hashlib
import logging
import os
import shutil
import sysconfig
import tarfile
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from lmforge.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 30.0  # seconds without data before a download gives up


@dataclass(frozen=True)
class DatasetInfo:
    """One named dataset.

    Args:
        filenames: names to look for in $LMFORGE_DATA_DIR and the cache, first match wins.
        field, label_field: the default text and label fields when the file is CSV/JSON.
        suffixes, exclude_dirs: the default file filter when the dataset is a folder.
    """

    name: str
    about: str
    url: str | None
    sha256: str | None
    filenames: tuple[str, ...]
    field: str | None = None
    label_field: str | None = None
    suffixes: tuple[str, ...] | None = None
    exclude_dirs: tuple[str, ...] = ()


DATASETS: dict[str, DatasetInfo] = {
    "python-stdlib": DatasetInfo(
        name="python-stdlib",
        about="the running Python's standard library .py files (no tests, no site-packages); "
        "always offline",
        url=None,
        sha256=None,
        filenames=(),
        suffixes=(".py",),
        # test/ holds deliberately non-UTF-8 modules; the package folders are not the stdlib
        exclude_dirs=("site-packages", "dist-packages", "test", "tests"),
    ),
    "tinyshakespeare": DatasetInfo(
        name="tinyshakespeare",
        about="Karpathy's tiny Shakespeare: one 1.1 MB text file of play dialogue",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/"
        "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        filenames=("tinyshakespeare.txt", "input.txt"),
    ),
    "imdb": DatasetInfo(
        name="imdb",
        about="IMDB movie reviews, 50k labelled; as CSV the labels are the 'sentiment' column "
        "(positive/negative), as the aclImdb folder they are the folder names (pos/neg)",
        url="https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
        sha256="c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
        filenames=("imdb-50k.csv.gz", "IMDB Dataset.csv", "aclImdb"),
        field="review",
        label_field="sentiment",
    ),
    "wine-reviews": DatasetInfo(
        name="wine-reviews",
        about="Wine Enthusiast reviews (Kaggle winemag-data-130k-v2); the download is a public "
        "mirror of only its first 2,191 rows, put the full Kaggle file in LMFORGE_DATA_DIR for all",
        url="https://raw.githubusercontent.com/aravind-reddy-dandu/Learning_project/"
        "b3d7d49ab28e83948859d87f2bbfa407e20c1f5d/winemag-data-130k-v2.csv",
        sha256="c36ca506a0bce1830b18ad63ca0cf8e02dc024b75c6069277e79ed6539622b46",
        filenames=(
            "winemag-data-130k-v2.csv",
            "winemag-data-130k-v2.csv.gz",
            "winemag-data-130k-v2.json",
            "winemag-130k-v2.first2191.csv.gz",
        ),
        field="description",
    ),
    "eli5": DatasetInfo(
        name="eli5",
        about="1,000 ELI5 questions with a human Reddit answer each (ALCE subset)",
        url="https://raw.githubusercontent.com/nusnlp/Think-Cite/"
        "3457002d7e098a085c1b60a134e39fac70299046/data/eli5.json",
        sha256="5b9cb0b4b231be8fdeabe1c252cf1998fe7ed10baeb887b3e1907606bab0eced",
        filenames=("eli5-alce-1000.json", "eli5.json"),
        field="answer",
    ),
}


def cache_dir() -> Path:
    """The lmforge cache folder: $LMFORGE_CACHE_DIR, else ~/.cache/lmforge."""
    env = os.environ.get("LMFORGE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lmforge"


def resolve_dataset(name: str) -> Path:
    """Path of the file or folder that holds dataset `name`, downloading it when needed.

    Example:
        >>> resolve_dataset("tinyshakespeare")
        PosixPath('/home/me/.cache/lmforge/datasets/tinyshakespeare/input.txt')
    """
    info = DATASETS.get(name)
    if info is None:
        raise ConfigError(f"unknown dataset {name!r}; pick one of: {', '.join(DATASETS)}")
    if info.name == "python-stdlib":
        return Path(sysconfig.get_paths()["stdlib"])
    data_dir = os.environ.get("LMFORGE_DATA_DIR")
    if data_dir:
        found = _first_existing(Path(data_dir).expanduser(), info.filenames)
        if found is not None:
            return found
    folder = cache_dir() / "datasets" / info.name
    found = _first_existing(folder, info.filenames)
    if found is not None:
        return found
    if info.url is None:
        raise DataError(
            f"dataset {name!r} has no download; put one of {_quoted(info.filenames)} in a folder "
            "and set LMFORGE_DATA_DIR to it"
        )
    archive = _download(info, folder)
    if archive.name.endswith((".tar.gz", ".tgz", ".tar")):
        _extract(archive, folder)
        archive.unlink()
    found = _first_existing(folder, info.filenames)
    if found is None:
        raise DataError(
            f"{info.url} did not give any of {_quoted(info.filenames)}; put one of them in a "
            "folder and set LMFORGE_DATA_DIR to it"
        )
    return found


def _first_existing(folder: Path, filenames: tuple[str, ...]) -> Path | None:
    for filename in filenames:
        if (folder / filename).exists():
            return folder / filename
    return None


def _quoted(names: tuple[str, ...]) -> str:
    return ", ".join(repr(n) for n in names)


def _download(info: DatasetInfo, folder: Path) -> Path:
    """Download info.url into folder under its own name; verify sha256 before the final rename."""
    from lmforge import progress  # imports tqdm: only downloads need it

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / Path(urllib.parse.urlparse(info.url).path).name
    tmp = target.with_name(f"{target.name}.part-{os.getpid()}")
    digest = hashlib.sha256()
    logger.info("downloading %s from %s", info.name, info.url)
    try:
        with urllib.request.urlopen(info.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with (
                open(tmp, "wb") as out,
                progress.bar(
                    total,
                    f"downloading {info.name}",
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    leave=False,
                ) as bar,
            ):
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
    except (OSError, HTTPException, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise DataError(
            f"could not download {info.name} from {info.url} ({reason}); put one of "
            f"{_quoted(info.filenames)} in a folder and set LMFORGE_DATA_DIR to it"
        ) from exc
    got = digest.hexdigest()
    if info.sha256 is not None and got != info.sha256:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"{info.url}: sha256 mismatch (expected {info.sha256}, got {got}); the file was "
            f"deleted: try again, or put one of {_quoted(info.filenames)} in a folder and set "
            "LMFORGE_DATA_DIR to it"
        )
    os.replace(tmp, target)
    return target


def _extract(archive: Path, folder: Path) -> None:
    """Unpack a tarball into folder via a temporary folder, refusing unsafe members."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=folder))
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # Python without extraction filters: check the members ourselves
                for member in tar.getmembers():
                    parts = Path(member.name).parts
                    if (
                        member.name.startswith("/")
                        or ".." in parts
                        or not (member.isfile() or member.isdir())
                    ):
                        raise DataError(
                            f"{archive}: unsafe member {member.name!r}; delete the file and "
                            "download it again"
                        )
                tar.extractall(tmp)
        for entry in tmp.iterdir():
            if not (folder / entry.name).exists():  # else another process unpacked it first
                os.replace(entry, folder / entry.name)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise DataError(
            f"could not unpack {archive} ({exc}); delete it and try again, or set "
            "LMFORGE_DATA_DIR to a folder that holds the unpacked data"
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
