"""File-system steps that every writer shares: one atomic file write, one folder swap (no torch,
no lmforge imports). Write through these, never into a file in place."""

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_public(path: str | Path) -> None:
    """Give a file made by tempfile.mkstemp (0600) or a folder made by mkdtemp (0700) the mode
    that open() or mkdir() would have given it: 0666 or 0777, less the umask."""
    full = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, full & ~umask())


def write_atomic(path: str | Path, data: str | bytes | Callable[[str], None]) -> Path:
    """Write `path` through a temporary file in the same folder and a rename, so after a crash
    it holds the old bytes or the new ones, never half.

    Args:
        data: text (written as UTF-8), bytes, or a function that writes the temporary path it
            is given (torch.save, safetensors, matplotlib, ...).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        if callable(data):
            data(tmp)
        else:
            Path(tmp).write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        make_public(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def replace_folder(tmp: Path, out: Path) -> None:
    """Put the complete folder `tmp` (a sibling of `out`) at `out`, moving an older `out` aside
    first and deleting it after: `out` is always the old folder or the new one, never a mix."""
    if out.exists():
        trash = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(trash)
        tmp.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(out)
