"""The one progress-bar helper. Library code asks for a bar; the CLI decides whether it shows.

Bars go to stderr (tqdm), with rate and ETA, and are silent unless `enable(True)` was called.
"""

from tqdm.auto import tqdm

_enabled = False


def enable(on: bool = True) -> None:
    """Switch progress bars on (the CLI does this) or off (the default for library use)."""
    global _enabled
    _enabled = on


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
        disable=not _enabled,
        dynamic_ncols=True,
        leave=kw.pop("leave", True),
        **kw,
    )
