"""`lmforge sample` on a Hugging Face GPT-2 folder: top-k/top-p sampling, beam search (best or
several beams, length penalty, early stopping, no-repeat n-grams, stop strings), and text
decoded without special tokens."""

import pytest

import lmforge
from lmforge.cli.main import main
from lmforge.generation.beam import beam_search
from tests.cli.test_train import _error  # one line, exit 2, no traceback


@pytest.fixture
def hf_folder(hf_gpt2):
    return hf_gpt2


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


@pytest.fixture(scope="module")
def task_runs(tmp_path_factory):
    """A 2-class classifier and a masked LM, 3 steps each."""
    from tests.cli.test_classify import TINY, write_reviews

    root = tmp_path_factory.mktemp("tasks")
    reviews = write_reviews(root / "reviews.csv")
    data = ["--data", str(reviews), "--field", "review"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMFORGE_CACHE_DIR", str(root / "cache"))
        for task, extra in (("classify", ["--label-field", "sentiment"]), ("mlm", [])):
            argv = ["train", "--task", task, *data, *extra, *TINY, "--max-steps", "3"]
            assert main([*argv, "--json", "--out", str(root / task)]) == 0
    return root


@pytest.mark.parametrize(
    ("task", "fix"),
    [("classify", "use `lmforge predict {run} "), ("mlm", "`lmforge eval {run}`")],
)
def test_sampling_a_classifier_or_masked_lm_names_the_verb_to_use(task_runs, capsys, task, fix):
    run = str(task_runs / task)
    what = "a text classifier" if task == "classify" else "a masked language model"
    err = _error(capsys, ["sample", run, "--max-new-tokens", "3"])
    assert f"{run} is {what}" in err and fix.format(run=run) in err
    with pytest.raises(lmforge.ConfigError, match="needs a causal language model"):
        lmforge.generate_text(run, "the film")


def test_a_missing_local_run_folder_is_named_without_asking_the_hub(tmp_path, capsys, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("lmforge.presets._download", lambda repo: pytest.fail("went online"))
    err = _error(capsys, ["sample", "runs/nope"])
    assert "run folder runs/nope does not exist" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no runs/ folder either: the hub is a candidate
    assert _error(capsys, ["sample", "other/nope"]).startswith(
        "lmforge: error: no local folder other/nope exists"
    )


def test_a_training_config_serves_sample_too(hf_folder, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("data: wine-reviews\nmax_steps: 3\nseed: 4\nmax_new_tokens: 6\n")
    with_config = _out(capsys, ["sample", str(hf_folder), "--config", str(config)])
    argv = ["sample", str(hf_folder), "--seed", "4", "--max-new-tokens", "6"]
    assert with_config == _out(capsys, argv)  # data, max_steps: train's, ignored here
    config.write_text("max_new_tokns: 6\n")  # a key no verb has is still an error
    err = _error(capsys, ["sample", str(hf_folder), "--config", str(config)])
    assert "unknown option 'max_new_tokns'" in err and "did you mean 'max_new_tokens'" in err


def test_unseen_characters_map_to_the_unknown_token(char_run, capsys):
    argv = ["sample", str(char_run), "--prompt", "JULIÉT:", "--max-new-tokens", "5"]
    err = _error(capsys, [*argv, "--seed", "1"])
    assert "'É'" in err and "--unknown-token" in err
    out = _out(capsys, [*argv, "--seed", "1", "--unknown-token", "?"])
    same = _out(capsys, [*argv[:3], "JULI?T:", *argv[4:], "--seed", "1"])
    assert out.removeprefix("JULIÉT:") == same.removeprefix("JULI?T:")


def test_more_samples_than_memory_holds_is_one_line_naming_the_flag(hf_folder, capsys):
    argv = ["sample", str(hf_folder), "--prompt", "Why is", "--num-samples", "10000000000"]
    err = _error(capsys, argv)
    assert "GiB" in err and "--num-samples" in err


def test_threads_gives_the_same_text_and_a_bad_count_is_one_line(hf_folder, capsys):
    argv = ["sample", str(hf_folder), "--prompt", "Why is", "--max-new-tokens", "8"]
    argv += ["--temperature", "0"]
    assert _out(capsys, [*argv, "--threads", "1"]) == _out(capsys, argv)
    err = _error(capsys, [*argv, "--threads", "0"])
    assert "threads=0" in err and "--threads" in err
