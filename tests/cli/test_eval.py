"""`lmforge eval` on every kind of folder the other verbs take: a run, a converted run, a Hugging
Face folder; on raw text and on prepared folders; errors that name flags eval has."""

import json

import pytest

from lmforge.cli.main import main


def _json(capsys, argv) -> dict:
    capsys.readouterr()
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


def _error(capsys, argv) -> str:
    capsys.readouterr()
    code = main([*argv, "--json"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("lmforge: error:") and "\n" not in err and "Traceback" not in err
    return err


@pytest.fixture
def question(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("Why is the sky blue? Blue light scatters the most.\n" * 3, encoding="utf-8")
    return path


def test_a_converted_run_and_its_hugging_face_folder_give_the_same_numbers(
    hf_gpt2, question, tmp_path, capsys
):
    run = tmp_path / "converted"
    assert main(["convert", str(hf_gpt2), "--to", "lmforge", str(run)]) == 0
    ours = _json(capsys, ["eval", str(run), "--data", str(question)])
    theirs = _json(capsys, ["eval", str(hf_gpt2), "--data", str(question)])
    assert ours["tokens"] == theirs["tokens"] > 0
    assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    assert ours["perplexity"] == pytest.approx(2.718281828 ** ours["loss"], rel=1e-4)
    for folder in (run, hf_gpt2):  # no data of their own: one line naming --data
        assert "pass --data FILE" in _error(capsys, ["eval", str(folder)])


def test_a_prepared_folder_is_read_as_prepared_not_as_text(char_run, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("JULIET: O Romeo, what light?\n" * 40, encoding="utf-8")
    prepared = tmp_path / "prep"
    tokenizer = str(char_run / "tokenizer")
    argv = ["prepare", "--data", str(text), "--tokenizer", tokenizer, "--val-fraction", "0"]
    assert main([*argv, "--out", str(prepared)]) == 0
    from_folder = _json(capsys, ["eval", str(char_run), "--data", str(prepared)])
    from_text = _json(capsys, ["eval", str(char_run), "--data", str(text)])
    assert from_folder["tokens"] == from_text["tokens"]  # tokens, not the folder's bytes
    assert from_folder["loss"] == pytest.approx(from_text["loss"], rel=1e-5)
    other = tmp_path / "other"
    argv = ["prepare", "--data", str(text), "--tokenizer", "char", "--val-fraction", "0"]
    assert main([*argv, "--out", str(other)]) == 0
    assert "prepared with another tokenizer" in _error(
        capsys, ["eval", str(char_run), "--data", str(other)]
    )


def test_unseen_characters_name_only_flags_eval_has(char_run, tmp_path, capsys):
    text = tmp_path / "accents.txt"
    text.write_text("JULIÉT: O Roméo!\n" * 5, encoding="utf-8")
    err = _error(capsys, ["eval", str(char_run), "--data", str(text)])
    assert "--unknown-token" in err and "--tokenizer" not in err
    mapped = _json(capsys, ["eval", str(char_run), "--data", str(text), "--unknown-token", "?"])
    assert mapped["tokens"] > 0 and mapped["bits_per_char"] > 0


def test_a_flag_typed_wins_over_the_config_file_even_at_its_default(char_run, tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text("device: bogus\nbatch_size: 4\n")
    typed = _json(capsys, ["eval", str(char_run), "--config", str(config), "--device", "auto"])
    assert typed["tokens"] > 0
    assert "bogus" in _error(capsys, ["eval", str(char_run), "--config", str(config)])
