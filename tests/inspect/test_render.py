"""The HTML report (every prompt token, the top-k table, inline data, nothing from the network)
and the PNG heatmaps (one file per prompt and layer, a panel per head plus their average)."""

import html
import json
import re
import sys

import pytest

from lmforge.errors import ConfigError
from lmforge.inspect import render
from lmforge.inspect.next_token import inspect_prompt
from lmforge.models.gpt import GPTCausalLM, GPTConfig
from lmforge.tokenizers.word import WordTokenizer

REVIEWS = [
    "wine review : Germany : Mosel : Riesling : crisp apple, lime and slate.",
    "wine review : Italy : Tuscany : Sangiovese : cherry, leather & dried herbs.",
    "wine review : US : California : Pinot Noir : ripe cherry and vanilla </script> <oak>.",
]
PROMPTS = ["wine review : germany", "wine review : us : california : cherry & <oak> </script>"]


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer.train(REVIEWS, vocab_size=60)


def _seen(tok, num_heads=2, num_layers=2, prompts=PROMPTS):
    cfg = GPTConfig(
        vocab_size=tok.vocab_size,
        max_seq_len=24,
        embed_dim=40,
        num_heads=num_heads,
        num_layers=num_layers,
    )
    model = GPTCausalLM(cfg).eval()
    return [inspect_prompt(model, tok, p, k=4) for p in prompts]


def test_report_holds_every_prompt_token_and_the_table(tok, tmp_path):
    seen = _seen(tok)
    path = render.write_html_report(seen, tmp_path / "report.html", title="wine & co")
    page = path.read_text(encoding="utf-8")
    sections = re.findall(r'<section class="prompt".*?</section>', page, re.S)
    assert len(sections) == 2
    for section, s in zip(sections, seen):
        spans = re.findall(r'<span class="tok[^"]*"[^>]*>(.*?)<small>', section)
        assert [html.unescape(t) for t in spans] == s.tokens
        assert html.escape(s.prompt) in section
        rows = re.findall(
            r"<tr><td>(\d+)</td><td class='tokcell'>(.*?)</td><td>(.*?)</td>", section
        )
        assert [(int(r), html.unescape(t), float(p)) for r, t, p in rows] == [
            (i, t.token, round(t.prob, 3)) for i, t in enumerate(s.next_tokens, 1)
        ]
    assert "<title>wine &amp; co</title>" in page


def test_report_is_self_contained(tok, tmp_path):
    page = render.write_html_report(_seen(tok), tmp_path / "r.html").read_text(encoding="utf-8")
    assert not re.search(r"(https?:|ftp:)?//[\w-]+\.[\w.-]+", page)  # no URL of any kind
    for fetch in ("src=", "href=", "@import", "url(", "<link"):
        assert fetch not in page
    assert "<style>" in page and "<script>" in page
    assert page.count("</script>") == 2  # the prompt's "</script>" cannot close a script


def test_report_data_has_every_layer_and_view(tok, tmp_path):
    seen = _seen(tok, num_heads=2, num_layers=2)
    page = render.render_html(seen, "t")
    raw = re.search(r'id="lmforge-data">(.*?)</script>', page, re.S).group(1)
    data = json.loads(raw)
    assert [d["tokens"] for d in data] == [s.tokens for s in seen]
    for d, s in zip(data, seen):
        T = len(s.tokens)
        assert len(d["attn"]) == 2 and len(d["attn"][0]) == 3  # layers x (average + 2 heads)
        head1 = d["attn"][1][1]
        assert len(head1) == T and all(len(row) == T for row in head1)
        assert head1[-1] == pytest.approx(s.attention[1][0, -1].tolist(), abs=1e-4)
        avg_last = d["attn"][0][0][-1]
        assert sum(avg_last) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(("num_heads", "panels"), [(2, 3), (5, 6)])
def test_heatmap_has_a_panel_per_head_and_the_average(tok, num_heads, panels):
    seen = _seen(tok, num_heads=num_heads, num_layers=1)
    fig = render.attention_figure(seen[1], 0)
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert len(heatmaps) == panels
    assert [ax.get_title() for ax in heatmaps][-1] == f"average of {num_heads} heads"
    assert len(heatmaps[0].get_yticklabels()) == len(seen[1].tokens)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_pngs_one_per_prompt_and_layer(tok, tmp_path):
    from matplotlib.image import imread

    seen = _seen(tok, num_layers=2, prompts=["wine review", "wine review : us"])
    paths = render.save_attention_pngs(seen, tmp_path / "maps")
    names = [p.name for p in paths]
    assert names == [
        "prompt1-layer1.png",
        "prompt1-layer2.png",
        "prompt2-layer1.png",
        "prompt2-layer2.png",
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert p.stat().st_size < 300_000
        height, width, _ = imread(p).shape
        assert width > 2 * height  # three panels side by side
    assert not list((tmp_path / "maps").glob("*.tmp"))


def test_output_paths_are_checked(tok, tmp_path):
    seen = _seen(tok, num_layers=1)
    with pytest.raises(ConfigError, match="does not exist"):
        render.write_html_report(seen, tmp_path / "nope" / "r.html")
    with pytest.raises(ConfigError, match="does not exist"):
        render.save_attention_pngs(seen, tmp_path / "nope" / "deeper")
    with pytest.raises(ConfigError, match="is a folder"):
        render.write_html_report(seen, tmp_path)
    with pytest.raises(ConfigError, match="at least one prompt"):
        render.write_html_report([], tmp_path / "r.html")


def test_missing_matplotlib_is_one_line_with_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ConfigError, match=r"pip install lmforge\[plot\]"):
        render.import_pyplot()
