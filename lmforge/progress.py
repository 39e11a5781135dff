"""The one progress-bar helper. Library code asks for a bar; the CLI decides whether it shows.

Bars go to stderr (tqdm), with rate and ETA, and are silent unless `enable(True)` was called.
"""

from tqdm.auto import tqdm

_enabled = False


def enable(on: bool = True) -> None:
    """Switch progress bars on (the CLI does this) or off (the default for library use)."""
    global _enabled
    _enabled = on


def bar(total: float | None = None, desc: str = "", unit: str = "it", **kw) -> tqdm:
    """A tqdm bar that only draws when progress is enabled."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not _enabled,
        dynamic_ncols=True,
        leave=kw.pop("leave", True),
        **kw,
    )
