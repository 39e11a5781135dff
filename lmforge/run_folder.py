"""Run folders, read and written here only: config.json, weights, training state, exact resume.

RUN/ holds config.json, model.safetensors (latest weights), tokenizer/, metrics.jsonl and
state.pt; RUN/checkpoints/step-N/ holds complete (weights, state) pairs, each written under a
temporary name and renamed, so a crash at any moment leaves the last complete one intact. RUN's
own copies are hard links to the newest checkpoint's files where the filesystem allows: never
write into a run file in place, only replace it (a link shares its bytes with the checkpoint).
A training process holds RUN/.lock (an OS lock, with its pid) while it writes; readers ignore it.
"""

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_model, save_file, save_model

from lmforge import __version__
from lmforge.errors import CheckpointError, ConfigError
from lmforge.files import make_public, write_atomic, write_folder_atomic

CHECKPOINTS = "checkpoints"
LOCK = ".lock"

try:
    import fcntl
except ImportError:  # Windows: msvcrt byte-range locks instead
    fcntl = None


def link_or_copy(src: Path, dst: Path) -> None:
    """Put src's bytes at dst atomically: a hard link where the filesystem allows, else a copy."""
    tmp = dst.with_name(f".{dst.name}.link-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links here (another filesystem, FAT, some network mounts)
        write_atomic(dst, lambda t: shutil.copyfile(src, t))
        return
    try:
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_new_folder(out: str | Path, source: Path | None, overwrite: bool) -> Path:
    """ConfigError when `out` is the `source` folder, or a non-empty one without overwrite."""
    out = Path(out)
    if source is not None and out.exists() and out.resolve() == Path(source).resolve():
        raise ConfigError(f"{out} is the source folder; write to another folder")
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not empty; choose another folder or --overwrite")
    return out


def write_folder(out: str | Path, write, source: Path | None = None, overwrite=False) -> Path:
    """Make a new folder `out` with write(tmp): filled under a temporary name, then renamed, so
    it is complete or absent. `out` may not be `source`, nor (without overwrite) a non-empty
    folder."""
    return write_folder_atomic(check_new_folder(out, source, overwrite), write)


def save_weights(model: torch.nn.Module, path: Path, weights: dict | None = None) -> None:
    """Save a model's weights (or a given full state dict) as safetensors, atomically.

    Tied weights are stored once."""
    write_atomic(path, lambda tmp: _write_weights(model, tmp, weights))


def _write_weights(model: torch.nn.Module, path, weights: dict | None) -> None:
    if weights is None:
        with torch.no_grad():  # an engine lays weights out column-major (decode_layout_)
            for param in model.parameters():
                if not param.is_contiguous():
                    param.data = param.contiguous()
        save_model(model, str(path), metadata={"format": "pt"})
    else:
        save_file(weights, str(path), metadata={"format": "pt"})
    sort_safetensors_header(path)
    make_public(path)  # safetensors creates its files 0600, whatever the umask


def save_tensors(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """safetensors.save_file, atomically and byte-for-byte reproducible (see below)."""

    def write(tmp: str) -> None:
        save_file(tensors, tmp, metadata=metadata)
        sort_safetensors_header(tmp)

    write_atomic(path, write)


def sort_safetensors_header(path) -> None:
    """Rewrite a safetensors file's header with its metadata in sorted order, in place.

    safetensors writes the metadata from a hash map whose order changes from process to
    process (the names of tied weights that save_model drops), so identical tensors could give
    different bytes; sorted, they give the same bytes and a checksum can prove a reproduction.
    The header keeps its length (the same keys and values in another order), so the tensor data
    and its offsets stay where they are.
    """
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        meta = header.pop("__metadata__", None)
        ordered = {"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}
        ordered.update(header)  # the tensors' entries stay in safetensors' own (fixed) order
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # another JSON spelling than safetensors': keep its own header
            return
        f.seek(8)
        f.write(text.ljust(size, b" "))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights into `model`; a mismatch is a CheckpointError."""
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as e:  # noqa: BLE001 - corrupt or mismatched files are the user's
        raise CheckpointError(
            f"cannot load weights from {path}: {str(e).splitlines()[0]}"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {path} do not fit the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}): was the run's config changed?"
        )


def write_config(run_dir: Path, config: dict) -> None:
    config = {"lmforge_version": __version__, **config}
    write_atomic(Path(run_dir) / "config.json", json.dumps(config, indent=2) + "\n")


def read_config(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist: check the path")
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir} has no config.json: it is not a complete lmforge run "
            "(was training stopped before the first save?)"
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} is not valid JSON: the run folder is damaged") from None
    major = str(config.get("lmforge_version", "0")).split(".")[0]
    if "family" not in config or major != __version__.split(".")[0]:
        raise CheckpointError(
            f"{run_dir} was written by an incompatible lmforge version "
            f"({config.get('lmforge_version')}): retrain or convert it"
        )
    return config


def save_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    state: dict,
    keep_last: int = 1,
    weights: dict | None = None,
) -> Path:
    """Write RUN/checkpoints/step-N/{model.safetensors,state.pt} atomically, then update RUN/."""
    run_dir = Path(run_dir)
    ckpt_root = run_dir / CHECKPOINTS
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{state['step']:08d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=".tmp-"))
    try:
        make_public(tmp)
        _write_weights(model, tmp / "model.safetensors", weights)
        torch.save(state, tmp / "state.pt")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for name in ("model.safetensors", "state.pt"):  # RUN's copies share the checkpoint's bytes
        link_or_copy(final / name, run_dir / name)
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / "state.pt").is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_state(checkpoint: Path) -> dict:
    """The training state of a checkpoint (ours: plain tensors, numbers and numpy RNG state)."""
    return torch.load(Path(checkpoint) / "state.pt", map_location="cpu", weights_only=True)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's write lock (creating the folder) for the `with` block; a second
    writer gets a CheckpointError. The OS drops the lock when its process dies, so a stale lock
    file never blocks. A folder made here and left empty is removed again."""
    run_dir = Path(run_dir)
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    fd = _acquire(path)
    try:
        yield
    finally:
        if fcntl is not None:  # unlinked while held: a process that opened it re-checks
            path.unlink(missing_ok=True)
        os.close(fd)  # releases the lock
        if fcntl is None:
            try:
                path.unlink()
            except OSError:
                pass
        if made:
            try:
                run_dir.rmdir()  # only if the run failed before writing anything
            except OSError:
                pass


def _acquire(path: Path) -> int:
    """An open, locked descriptor of the lock file `path`, with this process's pid in it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            os.lseek(fd, 0, os.SEEK_SET)
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointError(
                f"{path.parent} is being written by another training process (pid {holder}): "
                "wait for it to finish or stop it, or train into another --out"
            )
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # its holder finished and removed that file meanwhile: lock the new one
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


_WINDOWS_LOCK_AT = 1 << 20  # a byte past the pid, so that others can still read the pid


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            import msvcrt

            os.lseek(fd, _WINDOWS_LOCK_AT, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        return False
    return True
