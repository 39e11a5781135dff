"""`lmforge sample` on a Hugging Face GPT-2 folder: top-k/top-p sampling, beam search (best or
several beams, length penalty, early stopping, no-repeat n-grams, stop strings), and text
decoded without special tokens."""

import pytest
import torch

import lmforge
from lmforge.cli.main import main
from lmforge.generation.beam import beam_search
from lmforge.tokenizers.base import train_tokenizer

TEXT = "Why is the sky blue? Sunlight scatters off the air, and blue light scatters the most.\n"


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny random GPT-2 saved by transformers, with a byte-level BPE (vocab.json, merges)."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("sample") / "tiny-gpt2"
    tok = train_tokenizer("bpe", [TEXT * 20], vocab_size=300)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=300,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=tok.eos_id,
        eos_token_id=tok.eos_id,
    )
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        model.transformer.wte.weight.normal_(std=0.3)  # peaky: beams differ from greedy
    model.save_pretrained(folder)
    tok.tokenizer.model.save(str(folder))
    return folder


def _out(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


def test_top_k_top_p_sampling_is_seeded(hf_folder, capsys):
    argv = ["sample", str(hf_folder), "--prompt", "Why is", "--max-new-tokens", "12"]
    argv += ["--top-k", "50", "--top-p", "0.95", "--seed", "3"]
    first = _out(capsys, argv)
    assert first.startswith("Why is") and first == _out(capsys, argv)
    assert "<|endoftext|>" not in first


def test_beams_print_the_best_beams_of_beam_search(hf_folder, capsys):
    model, tok = lmforge.load(hf_folder), lmforge.load_tokenizer(hf_folder)
    prompt = "Why is"
    expected = beam_search(
        model,
        tok.encode(prompt),
        10,
        num_beams=4,
        num_return=4,
        length_penalty=0.5,
        early_stopping=True,
        no_repeat_ngram_size=2,
        stop_token_ids=[tok.eos_id],
    )[0]
    argv = ["sample", str(hf_folder), "--prompt", prompt, "--max-new-tokens", "10"]
    argv += ["--num-beams", "4", "--length-penalty", "0.5", "--early-stopping", "true"]
    argv += ["--no-repeat-ngram-size", "2"]
    best = _out(capsys, argv)
    texts = [tok.decode([t for t in h.token_ids if t != tok.eos_id]) for h in expected]
    assert best == prompt + texts[0] + "\n"
    every = _out(capsys, [*argv, "--num-samples", "4"])  # all 4 beams, best first
    assert every == "".join(f"--- beam {i + 1} ---\n{prompt}{t}\n" for i, t in enumerate(texts))
    stop = texts[0][2:4]
    cut = _out(capsys, [*argv, "--stop", stop])
    assert stop not in cut[len(prompt) :] and cut != best


def test_bad_beam_options_are_one_line_errors(hf_folder, capsys):
    argv = ["sample", str(hf_folder), "--prompt", "Why", "--num-beams", "2"]
    for extra, message in (
        (["--num-samples", "3"], "num_return=3 must be between 1 and num_beams=2"),
        (["--early-stopping", "sometimes"], "invalid choice"),
        (["--repetition-penalty", "1.3"], "repetition_penalty does not apply to beam search"),
    ):
        capsys.readouterr()
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("lmforge: error:") and message in err and "\n" not in err, err


@pytest.mark.parametrize("flags", [["--top-k", "1"], ["--top-p", "1e-9"]])
def test_top_k_1_and_a_tiny_top_p_reach_the_sampler_and_give_the_greedy_text(
    hf_folder, capsys, flags
):
    argv = ["sample", str(hf_folder), "--prompt", "Why is", "--max-new-tokens", "12"]
    greedy = _out(capsys, [*argv, "--temperature", "0"])
    # temperature 1.0 and several seeds: only the flag under test can make these greedy
    seeded = {_out(capsys, [*argv, *flags, "--temperature", "1", "--seed", s]) for s in "123"}
    assert seeded == {greedy}
    assert {_out(capsys, [*argv, "--temperature", "1", "--seed", s]) for s in "123"} != {greedy}


@pytest.mark.parametrize("option", [{"top_k": 1}, {"top_p": 1e-9}])
def test_top_k_and_top_p_reach_the_sampler_from_python(hf_folder, option):
    kw = dict(max_new_tokens=12, temperature=1.0)
    greedy = lmforge.generate_text(hf_folder, "Why is", max_new_tokens=12, temperature=0)
    assert {
        lmforge.generate_text(hf_folder, "Why is", seed=s, **kw, **option) for s in (1, 2, 3)
    } == {greedy}
    unfiltered = {lmforge.generate_text(hf_folder, "Why is", seed=s, **kw) for s in (1, 2, 3)}
    assert unfiltered != {greedy}
