"""`lmforge sample`: generate text from a run (or a preset), streaming tokens as they come; with
--num-beams, the best beam (or the --num-samples best) of a beam search."""

import sys
from dataclasses import dataclass, field

from lmforge.cli import options

UNKNOWN_TOKEN_HELP = (
    "char tokenizers: read characters the run never saw as this one of its characters (e.g. ?)"
)


@dataclass
class SampleConfig:
    prompt: str = field(default="\n", metadata={"help": "text to continue"})
    max_new_tokens: int = field(default=200, metadata={"help": "tokens to generate"})
    temperature: float = field(
        default=1.0,
        metadata={
            "help": "1 samples the model's own distribution (as generate_text() does), lower is "
            "safer, 0 = greedy"
        },
    )
    top_k: int | None = field(default=None, metadata={"help": "keep the k most likely tokens"})
    top_p: float | None = field(default=None, metadata={"help": "nucleus sampling mass"})
    min_p: float | None = field(default=None, metadata={"help": "drop tokens below min_p * max"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "> 1 discourages repeats"})
    num_samples: int = field(
        default=1,
        metadata={"help": "samples (one batch); with --num-beams, the N best beams (N <= beams)"},
    )
    num_beams: int = field(default=1, metadata={"help": "beam search width; 1 samples instead"})
    length_penalty: float = field(
        default=1.0, metadata={"help": "beams score logprob / length ** this; > 0 favours long"}
    )
    early_stopping: str = field(
        default="false",
        metadata={
            "help": "beams: true stops at num_beams finished; false when no beam can improve at "
            "its length; never when none can at any length",
            "choices": ("false", "true", "never"),
        },
    )
    no_repeat_ngram_size: int = field(
        default=0, metadata={"help": "ban repeating any n-gram of this size (0: off)"}
    )
    stop: list[str] | None = field(default=None, metadata={"help": "stop string (repeatable)"})
    seed: int | None = field(default=None, metadata={"help": "random seed"})
    device: str = field(default="auto", metadata={"help": "auto|cpu|cuda"})
    unknown_token: str | None = field(default=None, metadata={"help": UNKNOWN_TOKEN_HELP})
    quantize: str | None = options.quantize_option()
    adapter: str | None = options.adapter_option()
    threads: int | None = field(
        default=None,
        metadata={"help": "CPU threads while decoding (default: the fastest of 1 and all cores)"},
    )


def sampling_options(cfg: SampleConfig) -> dict:
    """How each token is drawn, as generate() and the Engine's SamplingParams name it (the
    options `lmforge chat` shares with `sample`)."""
    names = "temperature top_k top_p min_p repetition_penalty no_repeat_ngram_size seed".split()
    return {name: getattr(cfg, name) for name in names}


def add_parser(sub):
    p = sub.add_parser(
        "sample",
        help="generate text from a run",
        description="Generate text from a run folder, a Hugging Face folder or a model name "
        "(distilgpt2): sampling, or beam search with --num-beams.",
    )
    p.add_argument("run", help="run folder, Hugging Face folder or model name (distilgpt2)")
    options.add_options(p, SampleConfig)
    return p


def run(args) -> int:
    from lmforge.api import load_run
    from lmforge.generation.generate import generate_text, generate_texts

    cfg = options.from_args(args, SampleConfig)
    run = load_run(args.run, cfg.device, cfg.unknown_token, cfg.quantize, cfg.adapter)
    run.require("causal-lm", "`lmforge sample`")
    model, tok = run.model, run.tokenizer
    tok.encode(cfg.prompt)  # a prompt the tokenizer cannot encode fails before any output
    kw = dict(
        max_new_tokens=cfg.max_new_tokens,
        **sampling_options(cfg),
        stop=cfg.stop,
        num_beams=cfg.num_beams,
        length_penalty=cfg.length_penalty,
        early_stopping={"false": False, "true": True}.get(cfg.early_stopping, cfg.early_stopping),
        threads=cfg.threads,
    )
    if cfg.num_samples == 1:
        sys.stdout.write(cfg.prompt)
        for piece in generate_text(model, tok, cfg.prompt, **kw):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        for i, text in enumerate(
            generate_texts(model, tok, cfg.prompt, num_samples=cfg.num_samples, **kw)
        ):
            what = "beam" if cfg.num_beams > 1 else "sample"
            print(f"--- {what} {i + 1} ---\n{cfg.prompt}{text}")
    return 0
