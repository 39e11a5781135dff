"""The run folder's old import path: it lives in lmforge/run_folder.py now, which loading a run
for sampling or serving imports without pulling in training/."""

from lmforge.files import make_public, umask  # noqa: F401
from lmforge.files import write_atomic as atomic_write_text  # noqa: F401
from lmforge.run_folder import (  # noqa: F401
    CHECKPOINTS,
    LOCK,
    check_new_folder,
    latest_checkpoint,
    link_or_copy,
    list_checkpoints,
    load_state,
    load_weights,
    read_config,
    run_lock,
    save_checkpoint,
    save_tensors,
    save_weights,
    sort_safetensors_header,
    write_config,
    write_folder,
)
