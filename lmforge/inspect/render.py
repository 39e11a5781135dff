"""PNG attention heatmaps (matplotlib) and the self-contained HTML report of prompt inspections.

matplotlib is optional (`pip install lmforge[plot]`) and imported only inside the functions that
draw, with the Agg backend. The HTML report must work offline: inline CSS and JS, no URL at all.
"""

import html
import json
import math
import os
from pathlib import Path

from lmforge.errors import ConfigError
from lmforge.files import write_atomic
from lmforge.inspect.attention import average_heads
from lmforge.inspect.next_token import PromptInspection

FIGURE_SUFFIXES = (".png", ".svg", ".pdf")


# ---------------------------------------------------------------- shared by every renderer


def check_out_path(path: str | Path, flag: str = "--out", suffixes: tuple[str, ...] = ()) -> Path:
    """`path` as a Path, checked to be writable as a file: its folder exists and is writable, it
    is no folder."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name such as {path / 'x'}")
    _check_parent(path, flag)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ConfigError(f"{flag} {path}: use one of the file types {', '.join(suffixes)}")
    return path


def check_out_dir(path: str | Path, flag: str = "--png", names: tuple[str, ...] = ()) -> Path:
    """`path` as a Path, checked to be usable as an output folder: a writable folder, or a new
    one whose parent exists; none of the file `names` to write into it may be a folder."""
    path = Path(path)
    if path.is_dir():
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{flag} {path}: the folder is not writable; pick another folder")
        for name in names:
            if (path / name).is_dir():
                raise ConfigError(
                    f"{flag} {path}: {path / name} is a folder but a file goes there; "
                    "remove it or pick another folder"
                )
    elif path.exists():
        raise ConfigError(
            f"{flag} {path} is a file, not a folder; give a folder (created if missing) "
            "or remove the file"
        )
    else:
        _check_parent(path, flag)
    return path


def _check_parent(path: Path, flag: str) -> None:
    if not path.parent.is_dir():
        raise ConfigError(
            f"{flag} {path}: the folder {path.parent} does not exist; "
            "create it or pick another path"
        )
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(
            f"{flag} {path}: the folder {path.parent} is not writable; pick another path"
        )


def import_pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display), or a one-line error."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "drawing figures needs matplotlib, which is not installed: pip install lmforge[plot]"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure atomically (format from the suffix) and close it."""
    path = Path(path)
    try:
        fmt = path.suffix.lstrip(".").lower() or "png"
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path


def _short(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


# ---------------------------------------------------------------- PNG heatmaps


def attention_figure(seen: PromptInspection, layer: int):
    """A figure of one layer's attention for one prompt: a panel per head, then their average.

    Args:
        layer: 0-based layer index.
    Returns:
        a matplotlib Figure with H + 1 heatmap panels (rows = queries, columns = keys) and one
        shared colour bar from 0 to 1 (square-root scale).
    """
    plt = import_pyplot()
    from matplotlib.colors import PowerNorm

    maps = seen.attention[layer]  # (H, T, T)
    H, T, _ = maps.shape
    panels = [(f"head {h + 1}", maps[h]) for h in range(H)]
    panels.append((f"average of {H} heads", average_heads(maps)))
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    side = min(max(0.16 * T + 1.4, 2.8), 6.5)  # inches per panel, grows with the prompt
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(side * ncols + 1.0, side * nrows + 0.6),
        squeeze=False,
        layout="constrained",
    )
    every = max(1, math.ceil(T / 40))  # at most ~40 tick labels per axis
    ticks = list(range(0, T, every))
    labels = [seen.tokens[i] for i in ticks]
    font = 8 if T <= 24 else 6
    image, norm = None, PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
    for ax, (name, grid) in zip(axes.flat, panels):
        # a square-root colour scale: small weights (1/T for long prompts) stay visible
        image = ax.imshow(grid.numpy(), cmap="Blues", norm=norm, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xticks(ticks, labels, rotation=90, fontsize=font)
        ax.set_yticks(ticks, labels, fontsize=font)
        ax.set_xlabel("attended to (key)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("attending (query)", fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        fig.delaxes(ax)
    fig.suptitle(f"layer {layer + 1}: \u201c{_short(seen.prompt)}\u201d", fontsize=11)
    fig.colorbar(image, ax=[ax for ax in fig.axes if ax.images], shrink=0.8, label="attention")
    return fig


def png_names(inspections: list[PromptInspection]) -> list[str]:
    """The file names save_attention_pngs writes, prompt-major: `prompt<N>-layer<L>.png`."""
    return [
        f"prompt{n}-layer{layer + 1}.png"
        for n, seen in enumerate(inspections, 1)
        for layer in range(len(seen.attention))
    ]


def save_attention_pngs(inspections: list[PromptInspection], folder: str | Path) -> list[Path]:
    """One PNG per prompt and layer, `prompt<N>-layer<L>.png` (1-based) in `folder`.

    The folder is created when its parent exists. Returns the paths written, prompt-major.
    """
    names = png_names(inspections)
    folder = check_out_dir(folder, "--png", tuple(names))
    import_pyplot()  # fails before the folder is made when matplotlib is missing
    folder.mkdir(exist_ok=True)
    figures = (  # drawn one at a time, in png_names' order
        attention_figure(seen, layer)
        for seen in inspections
        for layer in range(len(seen.attention))
    )
    return [save_figure(fig, folder / name) for fig, name in zip(figures, names)]


# ---------------------------------------------------------------- HTML report

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 60em; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: .2em; } h2 { font-size: 1.1em; margin: 0 0 .5em; }
.about { color: #666; margin-top: 0; }
section { border: 1px solid #ddd; border-radius: 8px; padding: 1em 1.2em; margin: 1.2em 0; }
.controls { display: flex; flex-wrap: wrap; gap: .4em 1.2em; align-items: center;
            margin-bottom: .8em; font-size: .9em; }
.controls label { cursor: pointer; }
.row { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.tokens { flex: 3 1 24em; line-height: 2.6; }
.tok { display: inline-block; padding: 0 .3em; margin: 0 .1em; border-radius: 4px;
       text-align: center; cursor: pointer; white-space: pre; border: 2px solid transparent; }
.tok small { display: block; font-size: .65em; line-height: 1.1; color: #555; }
.tok.query { border-color: #c0392b; }
.note { font-size: .85em; color: #555; margin: .6em 0 0; }
table.next { flex: 1 1 14em; border-collapse: collapse; font-size: .9em; }
table.next th, table.next td { padding: .2em .5em; text-align: left; }
table.next th { border-bottom: 1px solid #ccc; }
td.tokcell { font-family: ui-monospace, monospace; white-space: pre; }
.bar { background: #2e86c1; height: .7em; border-radius: 2px; }
"""

# One shading function for every prompt section; DATA holds each prompt's maps:
# attn[layer][0 = average, 1.. = heads][query][key].
_JS = """
const DATA = JSON.parse(document.getElementById("lmforge-data").textContent);
function shade(section) {
  const d = DATA[+section.dataset.index];
  const layer = +section.querySelector("select.layer").value;
  const view = +section.querySelector("input.view:checked").value;
  const q = +section.dataset.query;
  const row = d.attn[layer][view][q];
  const top = Math.max(...row, 1e-9);
  section.querySelectorAll(".tok").forEach((el, j) => {
    const w = row[j];
    el.style.background = `rgba(230, 126, 34, ${(w / top).toFixed(3)})`;
    el.querySelector("small").textContent = (100 * w).toFixed(1) + "%";
    el.title = `attention from "${d.tokens[q]}" to "${d.tokens[j]}": ${w.toFixed(4)}`;
    el.classList.toggle("query", j === q);
  });
  section.querySelector(".who").textContent = d.tokens[q];
  section.querySelector(".what").textContent = view === 0 ? "the average of the heads" :
    "head " + view;
}
document.querySelectorAll("section.prompt").forEach(section => {
  section.querySelectorAll("select, input").forEach(el =>
    el.addEventListener("change", () => shade(section)));
  section.querySelectorAll(".tok").forEach((el, j) => el.addEventListener("click", () => {
    section.dataset.query = j; shade(section); }));
  shade(section);
});
"""


def _maps_for_page(seen: PromptInspection) -> list:
    """attn[layer][view][query][key] with view 0 = average of heads, rounded for the page."""
    out = []
    for maps in seen.attention:  # (H, T, T)
        views = [average_heads(maps), *maps]
        out.append([[[round(w, 4) for w in row] for row in v.tolist()] for v in views])
    return out


def _section(n: int, seen: PromptInspection) -> str:
    esc = html.escape
    L, (H, T, _) = len(seen.attention), seen.attention[0].shape
    last = average_heads(seen.attention[-1])[T - 1]  # what the page shows before any click
    top = max(float(last.max()), 1e-9)
    spans = "".join(
        f'<span class="tok{" query" if j == T - 1 else ""}" '
        f'style="background: rgba(230, 126, 34, {float(w) / top:.3f})">{esc(tok)}'
        f"<small>{100 * float(w):.1f}%</small></span>"
        for j, (tok, w) in enumerate(zip(seen.tokens, last.tolist()))
    )
    layers = "".join(
        f'<option value="{i}"{" selected" if i == L - 1 else ""}>layer {i + 1}</option>'
        for i in range(L)
    )
    views = [("average", 0)] + [(f"head {h + 1}", h + 1) for h in range(H)]
    radios = "".join(
        f'<label><input type="radio" class="view" name="view-{n}" value="{v}"'
        f"{' checked' if v == 0 else ''}> {name}</label>"
        for name, v in views
    )
    rows = "".join(
        f"<tr><td>{r}</td><td class='tokcell'>{esc(t.token)}</td><td>{t.prob:.3f}</td>"
        f"<td style='width:6em'><div class='bar' style='width:{100 * t.prob:.1f}%'></div></td></tr>"
        for r, t in enumerate(seen.next_tokens, 1)
    )
    return f"""
<section class="prompt" data-index="{n}" data-query="{T - 1}">
<h2>Prompt {n + 1}: <code>{esc(seen.prompt)}</code> <small>({T} tokens)</small></h2>
<div class="controls"><label>show <select class="layer">{layers}</select></label>{radios}</div>
<div class="row">
<div class="tokens">{spans}
<p class="note">Shading: attention paid by <b class="who">{esc(seen.tokens[-1])}</b> (outlined;
click any token to pick another) to each token, <span class="what">the average of the heads</span>;
darkest = most attention in that row, the number is the probability.</p></div>
<table class="next"><tr><th>#</th><th>next token</th><th>prob</th><th></th></tr>{rows}</table>
</div>
</section>"""


def render_html(inspections: list[PromptInspection], title: str, about: str = "") -> str:
    """The report page as a string: one section per prompt, all data inline."""
    if not inspections:
        raise ConfigError("the report needs at least one prompt; pass --prompt")
    data = [{"tokens": s.tokens, "attn": _maps_for_page(s)} for s in inspections]
    # "<" never appears in JSON outside strings; escaping it keeps "</script>" out of the data.
    payload = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    sections = "".join(_section(n, s) for n, s in enumerate(inspections))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="about">{html.escape(about)}</p>
{sections}
<script type="application/json" id="lmforge-data">{payload}</script>
<script>{_JS}</script>
</body></html>
"""


def write_html_report(
    inspections: list[PromptInspection], path: str | Path, title: str = "", about: str = ""
) -> Path:
    """Write the self-contained report (inline CSS/JS, no URLs) for several prompts.

    Example:
        seen = [inspect_prompt(model, tok, p) for p in ("wine review : us", "wine review : italy")]
        write_html_report(seen, "report.html", title="wine GPT")
    """
    path = check_out_path(path)
    page = render_html(inspections, title or "lmforge inspect", about)
    return write_atomic(path, page)
