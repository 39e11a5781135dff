"""Run-folder files: the same tensors give the same bytes in any process, files and folders get
the umask's mode, RUN's copies of the newest checkpoint are hard links (or copies), and the write
lock that keeps a second training process out."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmforge import run_folder as ckpt
from lmforge.errors import CheckpointError
from lmforge.files import write_atomic
from lmforge.models.gpt import GPTCausalLM, GPTConfig
from lmforge.run_folder import LOCK, run_lock

SAVE_TWICE = """
import hashlib, sys
from pathlib import Path
import torch
from lmforge.models.gpt import GPTCausalLM, GPTConfig
from lmforge.run_folder import save_weights
torch.manual_seed(0)
model = GPTCausalLM(GPTConfig(vocab_size=40, embed_dim=16, num_heads=2, num_layers=1, ffn_dim=32))
for i in range(4):  # safetensors' hash maps may order differently even within one process
    path = Path(sys.argv[1]) / f"w{i}.safetensors"
    save_weights(model, path)
    print(hashlib.sha256(path.read_bytes()).hexdigest())
"""


def _tiny_model() -> GPTCausalLM:
    torch.manual_seed(0)
    return GPTCausalLM(GPTConfig(vocab_size=40, embed_dim=16, num_heads=2, num_layers=1))


def test_same_tied_weights_give_the_same_bytes_in_two_processes(tmp_path):
    digests = []
    for seed in ("1", "2"):
        folder = tmp_path / seed
        folder.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": seed}
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), *sys.path])
        done = subprocess.run(
            [sys.executable, "-c", SAVE_TWICE, str(folder)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        digests += done.stdout.split()
    assert len(digests) == 8 and len(set(digests)) == 1, digests
    header = (tmp_path / "1" / "w0.safetensors").read_bytes()[8:200]
    assert header.startswith(b'{"__metadata__":{"format":"pt","head.weight":')


def test_sorted_header_still_loads_the_same_weights(tmp_path):
    model = _tiny_model()
    ckpt.save_weights(model, tmp_path / "model.safetensors")
    other = GPTCausalLM(model.config)
    ckpt.load_weights(other, tmp_path / "model.safetensors")
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.allclose(a, b, atol=0.0), name
    assert other.head.weight is other.backbone.embed.token.weight  # still tied


@pytest.mark.parametrize(
    "mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)]
)
def test_files_and_folders_get_the_umask_mode(tmp_path, mask, file_mode, dir_mode):
    old = os.umask(mask)
    try:
        write_atomic(tmp_path / "notes.json", "{}\n")
        final = ckpt.save_checkpoint(tmp_path, _tiny_model(), {"step": 1})
    finally:
        os.umask(old)
    for path in (tmp_path / "notes.json", tmp_path / "model.safetensors", final / "state.pt"):
        assert path.stat().st_mode & 0o777 == file_mode, path
    assert final.stat().st_mode & 0o777 == dir_mode
    assert (final / "model.safetensors").stat().st_mode & 0o777 == file_mode


def test_run_files_are_hard_links_to_the_newest_checkpoint(tmp_path):
    model = _tiny_model()
    first = ckpt.save_checkpoint(tmp_path, model, {"step": 1})
    with torch.no_grad():
        model.head.weight.add_(1.0)
    second = ckpt.save_checkpoint(tmp_path, model, {"step": 2}, keep_last=1)
    assert not first.exists() and ckpt.list_checkpoints(tmp_path) == [second]
    for name in ("model.safetensors", "state.pt"):
        top, kept = (tmp_path / name).stat(), (second / name).stat()
        assert (top.st_ino, top.st_dev) == (kept.st_ino, kept.st_dev), name
        assert top.st_nlink == 2
    assert ckpt.load_state(tmp_path)["step"] == 2
    loaded = GPTCausalLM(model.config)
    ckpt.load_weights(loaded, tmp_path / "model.safetensors")
    assert torch.allclose(loaded.head.weight, model.head.weight)


def test_run_files_are_copied_where_links_fail(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    final = ckpt.save_checkpoint(tmp_path, _tiny_model(), {"step": 3})
    for name in ("model.safetensors", "state.pt"):
        top = tmp_path / name
        assert top.stat().st_ino != (final / name).stat().st_ino
        digest = hashlib.sha256(top.read_bytes()).hexdigest()
        assert digest == hashlib.sha256((final / name).read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoints", "model.safetensors", "state.pt",
    ]  # fmt: skip


def test_a_held_lock_refuses_a_second_writer_with_the_holders_pid(tmp_path):
    run = tmp_path / "run"
    with run_lock(run):
        assert (run / LOCK).read_text().strip() == str(os.getpid())
        with pytest.raises(CheckpointError, match=rf"pid {os.getpid()}\).*another --out"):
            with run_lock(run):
                pass
        (run / "config.json").write_text("{}")
    assert not (run / LOCK).exists() and (run / "config.json").is_file()
    with run_lock(run):  # free again once released
        pass


def test_a_folder_made_for_the_lock_is_removed_when_nothing_was_written(tmp_path):
    with pytest.raises(ValueError), run_lock(tmp_path / "new"):
        raise ValueError("bad data")
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    with run_lock(tmp_path / "mine"):
        pass
    assert (tmp_path / "mine").is_dir()  # a folder the user made stays
