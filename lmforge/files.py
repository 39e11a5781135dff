"""File-system steps that every writer shares: one atomic file write, one folder swap (no torch,
no lmforge imports). Write through these, never into a file in place."""

import contextlib
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


def write_folder_atomic(out: str | Path, fill: Callable[[Path], None]) -> Path:
    """fill(tmp) a fresh sibling folder of `out`, then swap it in (replace_folder): `out` is
    complete or untouched, and a failure leaves no temporary or newly made parent folder."""
    out = Path(out)
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # deepest first
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        fill(tmp)
        make_public(tmp)  # mkdtemp makes it private
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return out


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
