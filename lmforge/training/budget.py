"""Budget-aware recipes (issue #20): a --max-time or --max-tokens run picks, among the sizes its
preset lists as `candidates`, the one its budget can feed, weight decay when the budget reads its
data many times over, and dropout when tokens per parameter or passes run high. The rule's
numbers (one set per family, RULES) come from measured runs (the steps-matched table in
docs/budget_table.json, README "Budget-aware recipes", and 10- and 30-minute runs): change them
with new measurements, not by feel.
"""

import dataclasses
import logging
import time
from dataclasses import dataclass

import torch

from lmforge import device as devices
from lmforge.training import loop, optim
from lmforge.training.config import TrainConfig
from lmforge.training.schedules import parse_duration

log = logging.getLogger(__name__)

# A larger candidate pays off once the budget gives it this many tokens per parameter. Measured
# steps-matched (docs/budget_table.json): at 3M tokens 6 x 192 (1.1 tokens/parameter) reached
# 1.476 against 4 x 128's 1.517, and beat what 4 x 128 makes with any budget (1.480 at 5.9M,
# overfitting past ~9M); at 2.3M (0.86 per parameter) it was still at 1.517 mid-schedule.
# 6 x 128 is no candidate: ahead of 4 x 128 at 3M (1.502) but not at 6M (1.487, where 4 x 128
# made 1.480 with 5.9M), and 0.8x as fast.
MIN_TOKENS_PER_PARAM = 1.0
# Past this many tokens per parameter a model starts to memorise Tiny Shakespeare's 1M training
# characters: 4 x 128 was still improving at 7.4 (5.9M tokens), but with 12.6M its best was at
# 9M (11.5 per parameter) and it ended worse (1.510, train loss 1.09). Dropout keeps the later
# steps useful.
DROPOUT_TOKENS_PER_PARAM = 8.0
DROPOUT = 0.1
# ... and past this many passes over the training data, whatever the size: 6 x 192 in 30 minutes
# on an AMX Xeon (context 256, decay 0.5, compiled; 15.6M tokens, 15 passes, 5.9 tokens per
# parameter) kept 1.453 at its best (step 9,000 of 10,187; the last 1.490, train 0.93), worse
# than its 1.42 in 10 minutes (5 passes, where no dropout was needed); with dropout 0.1 (12.4M
# tokens, 12 passes) 1.429, best at the end. 8 sits between the two (unmeasured there).
DROPOUT_EPOCHS = 8.0
# The recipe's dropout leaves the attention probabilities alone (the models' attention_dropout
# 0): on a CPU dropout inside attention takes SDPA off its fused kernel. A 6 x 192 step at
# context 256, batch 6 (Xeon, eager): 196 ms without dropout, 374 ms with 0.1 everywhere, 227 ms
# with 0.1 on the embeddings and residual branches only.
ATTENTION_DROPOUT = 0.0
# Stronger weight decay once a budget reads the training data 3 times or more (Muon and AdamW:
# decoupled decay on the block and head matrices). Measured on the Xeon (1M-character Tiny
# Shakespeare): 6 x 192 in 10 minutes, gpt-shakespeare 1.471-1.478 with the presets' 0.1 (4.2-4.8
# passes, train 1.12), 1.449 with 0.5 (5.3 passes, train 1.19) and 1.449 with 1.0 (5.5, train
# 1.24); llama-shakespeare 1.480 -> 1.451 with 0.5 (4.9 passes; 1.453 with 1.0); 4 x 128 at the
# AVX2 EPYC's 10-minute 5.9M tokens, 1.480 -> 1.462. But gpt-baby in 90 s (2 passes, still
# learning: train 1.42) went 1.582 -> 1.600 with 0.5: the decay pays only once the data repeats.
# Tokens per parameter do not tell these apart (1.85 for gpt-baby's, 1.89 for 6 x 192's). The
# line sits at 3 passes, between the 2 that lost and the 4.2 that gained (3 itself unmeasured):
# the probe times eager steps, and a compiled 10-minute run reads 1.1-1.3x the tokens it
# foresees (probes of 6.0-7.7k tok/s, i.e. 3.6-4.6 passes foreseen, for runs that then read
# 4.9-5.5M tokens), so a line at 4 would drop the decay on a slow-probing minute.
DECAY_EPOCHS = 3.0
WEIGHT_DECAY = 0.5
# torch.compile (inductor) for a time budget this long or longer on a CPU: the first step then
# compiles for ~20 s on 2 cores, and every later one runs faster (its norms, rotary and SwiGLU
# fused). Measured on the Xeon (6 x 192, batch 12 x 128, fp32): a step 165 -> 142 ms for
# gpt-shakespeare, 192 -> 146 ms for llama-shakespeare; a 10-minute llama-shakespeare run made
# 5.64M tokens (9.4k tok/s) against 4.9-5.3M eager. It pays for its 20 s from ~2.5 minutes on;
# gpt-baby's 90 s would lose a fifth of its steps to it.
COMPILE_MIN_SECONDS = 300.0
# A compiled run's candidates are timed eagerly first, and compiling speeds them up unevenly:
# in fp32 1.16x for 6 x 192 (and 1.15x for 4 x 128 with AVX2 kernels), in bf16 1.5-1.7x for
# 8 x 256 at context 256 and 1.4-1.5x at 512, where only compiled code has lmforge's attention
# backward (eagerly 3.4k tok/s on the Xeon, so 30 minutes "bought" 6.0M tokens for 6.3M
# parameters and the run fell back to 6 x 192). So a larger candidate the eager rate leaves
# unfed is timed compiled too, largest first, when this gain in its precision could feed it. A
# probe's compile is charged to the budget, so not on a hopeless one: a slow AVX2 CPU's 10
# minutes must not pay ~20 s for a 6 x 192 that fp32's small gain will not feed.
COMPILE_GAIN = {"bf16": 2.0, "fp32": 1.3}

# The char RNNs (char-rnn-lstm-shakespeare, char-rnn-gru-shakespeare: one layer of 256 or 512
# units, the TensorFlow tutorial's constant-rate Adam recipe), measured steps-matched for the
# LSTM (docs/budget_table.json): 512 units is ahead of 256 at every equal token budget (1.839
# against 1.955 at 1.28M, 1.541 against 1.641 at 6.4M) but 2.5x slower, so in a fixed time it
# wins only from about 3 tokens per parameter: at 2.4 (3.84M: 1.611) it is behind what 256 makes
# with 2.5x the tokens (~1.59 at 9.6M), at 3.9 (6.4M: 1.541) ahead of it (1.568 at 12.8M, and
# gaining ~0.008 per 1.28M more).
RNN_MIN_TOKENS_PER_PARAM = 3.0
# No candidate memorised in the table: 256 units was still improving at 23 tokens/parameter
# (12.8M), 512 at 3.9. The one overfit measured is the 1024-unit LSTM's, no candidate (README,
# held-out run: best at 6.9M tokens, 1.3 per parameter). So dropout (the transformers' 0.1, not
# measured on an RNN yet) only past what was seen still improving.
RNN_DROPOUT_TOKENS_PER_PARAM = 23.0
RNN_DROPOUT = 0.1


# What a candidate may set besides its size: its context (the model's max_seq_len, which is then
# the run's block size) and the batch that keeps its tokens per step. A user's --block-size,
# --max-seq-len, --batch-size, --global-batch-size or --grad-accum sets them for every candidate.
CONTEXT_FIELDS = ("max_seq_len", "batch_size")
# Model switches a candidate may set (gpt-shakespeare: Canon layers on 4 x 128 only, where they
# were measured to pay); a user's flag sets one for every candidate without fixing the size.
SWITCH_FIELDS = ("canon",)


@dataclass(frozen=True)
class Rule:
    """The largest candidate with at least `min_tokens_per_param` tokens per parameter; `dropout`
    (at least) from `dropout_tokens_per_param` on or once the budget reads the training data
    `dropout_epochs` times (None: tokens per parameter alone), with `attention_dropout` on the
    attention probabilities (None: the model's own); `weight_decay` (at least) once the budget
    reads the training data `decay_epochs` times (None: the preset's always); torch.compile for a
    time budget of `compile_min_seconds` or more on a CPU (None: only when asked)."""

    min_tokens_per_param: float
    dropout_tokens_per_param: float
    dropout: float
    decay_epochs: float | None = None
    weight_decay: float = 0.0
    compile_min_seconds: float | None = None
    dropout_epochs: float | None = None
    attention_dropout: float | None = None


TRANSFORMER_RULE = Rule(
    MIN_TOKENS_PER_PARAM,
    DROPOUT_TOKENS_PER_PARAM,
    DROPOUT,
    DECAY_EPOCHS,
    WEIGHT_DECAY,
    COMPILE_MIN_SECONDS,
    DROPOUT_EPOCHS,
    ATTENTION_DROPOUT,
)
RULES = {
    "char_rnn": Rule(RNN_MIN_TOKENS_PER_PARAM, RNN_DROPOUT_TOKENS_PER_PARAM, RNN_DROPOUT),
}  # by family; any other (gpt, llama) takes TRANSFORMER_RULE

PROBE_SHARE = 0.005  # each candidate's timed probe: this share of the time budget, 0.3 to 3 s


def applies(cfg: TrainConfig, preset: dict, world: int) -> bool:
    """Whether this run picks its recipe: a token or time budget, a preset with candidates,
    --auto (the default), one process (ranks would time the probe apart and could disagree)."""
    budgeted = cfg.max_time is not None or cfg.max_tokens is not None
    return cfg.auto and budgeted and bool(preset.get("candidates")) and world == 1


def choose_recipe(
    cfg: TrainConfig,
    preset: dict,
    model_cfg: dict,
    explicit: set[str],
    build,
    device: torch.device,
    block_size: int,
    rates: list[float] | None = None,
    train_tokens: int | None = None,
) -> tuple[dict, dict]:
    """The run's model config with the choice applied, and the choice (config.json's
    "auto_choice"; its "weight_decay" is the run's: the caller applies it to the TrainConfig).

    Args:
        explicit: the option names the user gave (flags or --config): those always win.
        build: model config dict -> task, to count each candidate's parameters and time it.
        rates: tokens/s of each candidate (the probe's result); None runs the probe when the
            budget is a time.
        train_tokens: the training split's tokens (the budget's passes over it set the decay;
            None: the preset's decay).
    """
    shapes = [dict(c) for c in preset["candidates"]]
    if explicit & {*CONTEXT_FIELDS, "block_size", "global_batch_size", "grad_accum"}:
        # the user's context and batch hold for every candidate
        shapes = [{k: v for k, v in s.items() if k not in CONTEXT_FIELDS} for s in shapes]
    given = explicit & set(SWITCH_FIELDS)
    shapes = [{k: v for k, v in s.items() if k not in given} for s in shapes]
    fields = {k for shape in shapes for k in shape} - {*CONTEXT_FIELDS, *SWITCH_FIELDS}  # size
    if explicit & fields:  # the user sized the model: time that shape alone
        shapes = [{k: model_cfg[k] for k in sorted(fields)}]
    # (batch, block) of each candidate: its own context where it names one, else the run's
    contexts = [
        (s.get("batch_size", cfg.batch_size), s.get("max_seq_len", block_size)) for s in shapes
    ]
    tasks = [build(candidate_model(model_cfg, shape)) for shape in shapes]
    params = [task.num_params() for task in tasks]
    seconds = parse_duration(cfg.max_time)
    vocab = model_cfg["vocab_size"]
    probing = rates is None and seconds is not None

    def probe(timed: list, context: tuple[int, int], compiled: bool = False) -> list[float]:
        batch, block = context
        run_cfg = dataclasses.replace(cfg, batch_size=batch)
        return probe_throughput(timed, run_cfg, device, block, vocab, seconds, compiled)

    if probing:  # one probe per context, all of that context's candidates in it
        rates = [0.0] * len(tasks)
        for context in dict.fromkeys(contexts):
            group = [i for i, c in enumerate(contexts) if c == context]
            for i, rate in zip(group, probe([tasks[i] for i in group], context)):
                rates[i] = rate
    rates_or_none = list(rates or [None] * len(tasks))
    rates = rates and rates_or_none  # a copy, which the dropout probe below may update
    tokens = [_budget_tokens(cfg.max_tokens, seconds, rate) for rate in rates_or_none]
    rule = RULES.get(preset.get("family"), TRANSFORMER_RULE)
    order = sorted(range(len(shapes)), key=params.__getitem__)
    fed = [i for i in order if tokens[i] >= rule.min_tokens_per_param * params[i]]
    pick = fed[-1] if fed else order[0]
    per_param = tokens[pick] / params[pick]
    epochs = tokens[pick] / train_tokens if train_tokens else None
    compiled, compile_s = cfg.compile, None
    if (
        "compile" not in explicit
        and rule.compile_min_seconds is not None
        and seconds is not None
        and seconds >= rule.compile_min_seconds
        and torch.device(device).type == "cpu"
    ):
        compiled = True

    def regularised(per_param: float, epochs: float | None) -> tuple[float, float | None]:
        """The dropout and attention dropout (None: the model's own) for this many tokens."""
        dropout = model_cfg.get("dropout", 0.0)
        if "dropout" in explicit or not (
            per_param >= rule.dropout_tokens_per_param
            or (None not in (rule.dropout_epochs, epochs) and epochs >= rule.dropout_epochs)
        ):
            return dropout, None
        return max(dropout, rule.dropout), (
            None if "attention_dropout" in explicit else rule.attention_dropout
        )

    def passes(n: float) -> float | None:  # over the training split, for n tokens
        return n / train_tokens if train_tokens else None

    dropout, attention = regularised(per_param, epochs)
    timed = None  # the candidate timed as it will train
    if probing and compiled:  # larger candidates compiling could feed: timed compiled, as trained
        spent = 0.0
        for i in reversed(order[order.index(pick) + 1 :]):
            precision = devices.resolve_precision(cfg.precision, device, tasks[i])
            hoped = tokens[i] * COMPILE_GAIN.get(precision, COMPILE_GAIN["fp32"])
            if hoped < rule.min_tokens_per_param * params[i]:
                continue
            regime = regularised(hoped / params[i], passes(hoped))
            start = time.perf_counter()
            as_trained = build(_with_dropout(model_cfg, shapes[i], *regime))
            (rates[i],) = probe([as_trained], contexts[i], True)
            spent += time.perf_counter() - start
            tokens[i] = _budget_tokens(cfg.max_tokens, seconds, rates[i])
            if tokens[i] >= rule.min_tokens_per_param * params[i]:
                pick = timed = i
                dropout, attention = regularised(tokens[i] / params[i], passes(tokens[i]))
                break
        compile_s = spent
    if probing and timed is None and (dropout > model_cfg.get("dropout", 0.0) or compiled):
        # time the pick again as it will train: dropout slows an eager CPU step (by 15% for
        # 6 x 192), torch.compile speeds it up (1.5-1.7x for 8 x 256 in bf16), and the tokens
        # it buys decide the dropout and the decay below
        as_trained = build(_with_dropout(model_cfg, shapes[pick], dropout, attention))
        start = time.perf_counter()
        (rates[pick],) = probe([as_trained], contexts[pick], compiled)
        if compiled:  # the run's compile then comes from this one's cache: the budget pays
            compile_s += time.perf_counter() - start
        tokens[pick] = _budget_tokens(cfg.max_tokens, seconds, rates[pick])
        timed = pick
    if timed is not None:
        per_param = tokens[pick] / params[pick]
        epochs = passes(tokens[pick])
        more = regularised(per_param, epochs)  # more only: dropout's own slower step would
        if more[0] > dropout:  # otherwise take it back, and its faster one ask for it again
            dropout, attention = more
    if compile_s is not None:  # the budget pays for the probes' compiles (the run's own then
        # comes from the pick's cache), at most half of it, so a run on a slow machine still trains
        compile_s = min(compile_s, 0.5 * seconds)
    weight_decay = cfg.weight_decay
    if (
        "weight_decay" not in explicit
        and rule.decay_epochs is not None
        and epochs is not None
        and epochs >= rule.decay_epochs
    ):
        weight_decay = max(weight_decay, rule.weight_decay)
    choice = {
        **shapes[pick],
        "dropout": dropout,
        **({} if attention is None else {"attention_dropout": attention}),
        "weight_decay": weight_decay,
        "compile": compiled,
        **({} if compile_s is None else {"compile_s": round(compile_s, 1)}),
        "params": params[pick],
        "tokens": int(tokens[pick]),
        "tokens_per_param": round(per_param, 2),
        "epochs": None if epochs is None else round(epochs, 1),
        "tokens_per_s": None if rates is None else round(rates[pick]),
        "candidates": [
            {**s, "params": p, "tokens": int(t), **({"tokens_per_s": round(r)} if rates else {})}
            for s, p, t, r in zip(shapes, params, tokens, rates_or_none)
        ],
    }
    if any(k in shapes[pick] for k in CONTEXT_FIELDS):  # the setup applies these two
        choice["batch_size"], choice["block_size"] = contexts[pick]
    choice["reason"] = describe(choice, seconds)
    return _with_dropout(model_cfg, shapes[pick], dropout, attention), choice


def candidate_model(model_cfg: dict, shape: dict) -> dict:
    """The model config of a candidate: its size and context (max_seq_len), not its batch."""
    return {**model_cfg, **{k: v for k, v in shape.items() if k != "batch_size"}}


def _with_dropout(model_cfg: dict, shape: dict, dropout: float, attention: float | None) -> dict:
    """candidate_model with the recipe's dropout (and attention_dropout unless None)."""
    model = candidate_model(model_cfg, shape)
    if "dropout" in model_cfg or dropout:
        model["dropout"] = dropout
    if attention is not None:
        model["attention_dropout"] = attention
    return model


def _budget_tokens(max_tokens: int | None, seconds: float | None, rate: float | None) -> float:
    """The tokens a budget buys: the token budget, or the time budget at `rate`, the smaller."""
    bought = [float(max_tokens)] if max_tokens is not None else []
    if seconds is not None and rate is not None:
        bought.append(seconds * rate)
    return min(bought)


def probe_throughput(
    tasks, cfg: TrainConfig, device, block_size: int, vocab: int, seconds, compiled: bool = False
):
    """Training tokens/s of each task: a few timed optimizer steps on random batches of the run's
    shape, after two untimed ones. With `compiled` the first compiles the loss as the run will
    (its graph cache then serves the run's own compile, so choose_recipe charges this probe to
    the budget); eager probes are not counted in it."""
    rates = []
    limit = min(max(PROBE_SHARE * seconds, 0.3), 3.0)
    for task in tasks:
        task = task.to(device)
        task.train()
        precision = devices.resolve_precision(cfg.precision, device, task)
        opt = optim.make_optimizer(
            task, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), kind=cfg.optimizer
        )
        loss_fn = loop._compiled(task.loss) if compiled else task.loss
        shape = (cfg.batch_size * cfg.grad_accum, block_size)
        steps, start = 0, None
        while start is None or steps < 3 or time.perf_counter() - start < limit:
            ids = torch.randint(0, vocab, shape, device=device)
            batch = {"token_ids": ids, "labels": torch.roll(ids, -1, dims=1)}
            try:
                with devices.autocast(device, precision):
                    loss = loss_fn(batch)
            except Exception as e:  # noqa: BLE001 - where compiling fails the run trains eagerly
                if loss_fn is task.loss:
                    raise
                log.warning("torch.compile failed in the probe (%s)", str(e).splitlines()[0])
                loss_fn = task.loss
                continue
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps += 1
            if steps == 2 and start is None:  # the first steps pay for allocation and kernels
                start, steps = time.perf_counter(), 0
        rates.append(steps * shape[0] * shape[1] / (time.perf_counter() - start))
    return rates


def describe(choice: dict, seconds: float | None) -> str:
    """The one line a run prints about its choice, e.g. "10 min at ~21k tok/s = ~12.6M tokens:
    6 x 192, dropout 0.1 (attention 0), weight decay 0.5, torch.compile (4.8 tokens/parameter,
    12.6 passes)"."""
    size = size_name(choice)
    head = f"{_count(choice['tokens'])} tokens"
    if seconds is not None and choice["tokens_per_s"] is not None:
        when = f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"
        head = f"{when} at ~{_count(choice['tokens_per_s'])} tok/s = ~{head}"
    others = [size_name(c) for c in choice["candidates"]]
    among = f" (of {', '.join(others)})" if len(others) > 1 else ""
    if choice.get("block_size") is not None:
        among += f", context {choice['block_size']} at batch {choice['batch_size']}"
    passes = f", {choice['epochs']:g} passes" if choice.get("epochs") is not None else ""
    compiled = ", torch.compile" if choice.get("compile") else ""
    dropout = f"dropout {choice['dropout']:g}"
    if choice.get("attention_dropout") is not None:
        dropout += f" (attention {choice['attention_dropout']:g})"
    return (
        f"budget: {head}: {size}{among}, {dropout}, weight decay "
        f"{choice['weight_decay']:g}{compiled} ({choice['tokens_per_param']:g} tokens/parameter"
        f"{passes}; --no-auto keeps the preset's)"
    )


def size_name(shape: dict) -> str:
    """A candidate's size in a few characters: "512 units" for an RNN, else "6 x 192" (layers x
    width) for a transformer."""
    if "hidden_dim" in shape:
        return f"{shape['hidden_dim']} units"
    return f"{shape['num_layers']} x {shape['embed_dim']}"


def _count(n: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}".replace(".0" + unit, unit)
    return f"{n:.0f}"
