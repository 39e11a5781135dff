"""The one progress-bar helper. Library code asks for a bar; the CLI decides whether it shows.

Bars go to stderr (tqdm), with rate and ETA. They show when stderr is a terminal, unless
`enable(False)` was called (`enable(True)`: always, e.g. into a log file).
"""

import sys

from tqdm.auto import tqdm

_enabled: bool | None = None  # None: when stderr is a terminal


def enable(on: bool | None = True) -> None:
    """Switch progress bars on or off (the CLI decides per verb); None: on in a terminal."""
    global _enabled
    _enabled = on


def _is_on() -> bool:
    if _enabled is None:
        return sys.stderr is not None and sys.stderr.isatty()
    return _enabled


class _Bar(tqdm):
    """A tqdm bar that, closed by an error leaving its `with` block, erases itself: the error
    line alone stays on the screen."""

    def __exit__(self, exc_type, exc_value, traceback):
        if exc_type is not None:
            self.leave = False
        return super().__exit__(exc_type, exc_value, traceback)


def bar(total: float | None = None, desc: str = "", unit: str = "it", **kw) -> tqdm:
    """A tqdm bar that only draws when progress is enabled (erased if an error ends its `with`)."""
    return _Bar(
        total=total,
        desc=desc,
        unit=unit,
        disable=not _is_on(),
        dynamic_ncols=True,
        leave=kw.pop("leave", True),
        **kw,
    )
