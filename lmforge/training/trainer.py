"""The trainer's old import path: the loop (`fit`, `train_step`, `evaluate`, LoopState) lives in
loop.py, `train()` and option resolution in setup.py, TrainConfig in config.py. Everything that
was importable from here still is."""

from lmforge import progress  # noqa: F401
from lmforge.data.batching import (  # noqa: F401
    ConsecutiveBatcher,
    EpochBatcher,
    WindowBatcher,
    iterate_in_order,
)
from lmforge.training.config import BATCHINGS, BUDGETS, TASKS, TrainConfig  # noqa: F401
from lmforge.training.loop import (  # noqa: F401
    LoopState,
    LostContact,
    StopNow,
    TrainingDiverged,
    _compiled,
    _steps_per_epoch,
    evaluate,
    fit,
    keep_mode,
    make_optimizer,
    train_step,
)
from lmforge.training.run_data import (  # noqa: F401
    SPLITS,
    labelled_split,
    load_data,
    make_examples,
    make_task_examples,
    task_spec,
)
from lmforge.training.setup import (  # noqa: F401
    RESUME_MAY_CHANGE,
    resolve_options,
    resume_options,
    train,
)
