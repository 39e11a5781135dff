"""File-system steps that every writer of folders shares (no torch, no lmforge imports)."""

import os
import shutil
from pathlib import Path


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
