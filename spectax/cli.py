"""The `spectax` command line: `spectax generate` (one prompt through a model) and `spectax list` (named models).

    spectax demo                                  (SmolLM2 plain and with a shipped drafter, side by side)
    spectax generate --model smollm2-135m-instruct "What is the capital of France?"
    spectax generate --model smollm2-135m-instruct --drafter medusa --compare-plain "What is the capital of France?"
    spectax generate --model smollm2-135m-instruct --batch-file prompts.txt --max-new-tokens 64
    spectax generate --model smollm2-135m-instruct --drafter block --stream "Tell me a story."
    spectax train heads --data DIR --kind medusa --out DIR
    spectax train block --data DIR --out DIR
    spectax train apar --data DIR --eval-data DIR --out DIR
    spectax generate --model ./my_checkpoint --tokenizer ./tokenizer.json --raw --max-new-tokens 32 "Once upon"
    spectax list

The tokenizer comes from `--tokenizer` (a tokenizer.json, a directory holding one, a .gguf, or "byte"), else from
the model: a registered name or a .gguf file carries its own; a Hugging Face directory or a spectax checkpoint
directory must hold a `tokenizer.json` (with `tokenizer_config.json` for BOS/EOS and the chat template) or exactly
one .gguf file. To make a checkpoint self-contained, copy those files next to its `spectax.json`.

Speed is measured honestly and once: the generation runs to completion (block_until_ready), and the time it spent
tracing, lowering and compiling (or reading JAX's persistent compilation cache, on by default: `--compile-cache`)
is measured through JAX's compile events and left out; the figure covers prefill + decode.
Bad arguments exit with status 2 (argparse's usage message, or `spectax: error: <message>` for a ValueError raised
by spectax, e.g. a bad model path).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PROG = "spectax"
DEMO_MODEL = "smollm2-135m-instruct"
DEMO_DRAFTER = "medusa"
BENCH_METHODS = ("plain", "draft-chain", "draft-tree", "blockwise", "medusa", "cerberus", "block-chain", "block-tree",
                 "ngram", "combined", "cos")   # spectax.bench.methods.METHODS (not imported: `spectax --help` is fast)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _shared_flags() -> dict[str, argparse.ArgumentParser]:
    """The flag groups the subcommands share (one definition, one help text each): compiling and tree (demo,
    generate, bench); sampling (demo, generate) and its many-valued form (bench: a run per temperature)."""
    compiling = argparse.ArgumentParser(add_help=False)
    group = compiling.add_argument_group("compilation")
    group.add_argument("--compile-cache", metavar="DIR",
                       help="JAX's persistent compilation cache: a later call with the same shapes reads the compiled "
                            "programs from here instead of compiling (default: the directory JAX is configured with, "
                            "else compile/ in the spectax cache, $SPECTAX_CACHE or ~/.cache/spectax)")
    group.add_argument("--no-compile-cache", action="store_true", help="compile every program afresh")
    tree = argparse.ArgumentParser(add_help=False)
    tree.add_argument_group("draft tree").add_argument(
        "--tree", metavar="SPEC", help='the drafter\'s tree: "chain:K" (K tokens in a line), "kary:B1,B2,..." '
                                       '(B_d children per node at depth d); bench also takes "optimal" (the Sequoia '
                                       "tree for the acceptance measured on held-out prompts and this machine's "
                                       "c(N)); default: each drafter's own")
    out = {"compiling": compiling, "tree": tree}
    for name, many in (("sampling", False), ("sampling_runs", True)):
        sampling = argparse.ArgumentParser(add_help=False)
        group = sampling.add_argument_group("decoding")
        group.add_argument("--max-new-tokens", type=_positive_int, default=128, help="default: %(default)s")
        group.add_argument("--temperature", type=float, default=[0.0] if many else 0.0, nargs="+" if many else None,
                           help="0 = greedy (default)" + ("; several: a run for each" if many else ""))
        group.add_argument("--top-k", type=int, default=0, help="0 = off (default)")
        group.add_argument("--top-p", type=float, default=1.0, help="1 = off (default)")
        group.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
        out[name] = sampling
    return out


def add_model_flag(parser, required: bool = False, default: str | None = None) -> None:
    """--model, with the one help text generate, bench and train share."""
    parser.add_argument("--model", required=required, default=default,
                        help="a registered name (see `spectax list`), a spectax checkpoint directory, a Hugging Face "
                             "directory or a .gguf file" + ("" if default is None else " (default: %(default)s)"))


def compile_flags() -> argparse.ArgumentParser:
    """The compilation flag group (--compile-cache, --no-compile-cache) as a parent parser (train shares it)."""
    return _shared_flags()["compiling"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Speculative and parallel decoding in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,generate,bench,list,train}")
    shared = _shared_flags()
    both = [shared["sampling"], shared["compiling"], shared["tree"]]

    demo = sub.add_parser("demo", parents=both,
                          help="SmolLM2-135M-Instruct answers a chat prompt plain and with a shipped drafter",
                          description="Answers a chat prompt with SmolLM2-135M-Instruct twice, plain and with the "
                                      "shipped drafter (--drafter), and prints both texts, tokens/s, speedup and tau.")
    demo.add_argument("prompt", nargs="?", default="Explain in a few sentences why the sky is blue.")
    demo.add_argument("--drafter", default=DEMO_DRAFTER, help="a shipped drafter: blockwise, medusa, cerberus "
                                                              "(heads) or block (default: %(default)s)")

    gen = sub.add_parser("generate", parents=both, help="generate replies to a prompt or a file of prompts",
                         description="Generate a reply to one prompt (or to each line of --batch-file, batched); "
                                     "prints the text on stdout and a speed line on stderr. The generation runs "
                                     "once: its compile time is measured and left out of the tokens/s.")
    gen.add_argument("prompt", nargs="?", help='the prompt text ("-" reads it from stdin)')
    gen.add_argument("--batch-file", metavar="FILE",
                     help="one prompt per line, decoded as one batch; prints one JSON object per prompt "
                          '({"prompt", "reply", "tokens"}) in order')
    add_model_flag(gen, required=True)
    gen.add_argument("--tokenizer", help='a tokenizer.json, a directory with one, a .gguf file, or "byte" '
                                         "(default: the model's own)")
    gen.add_argument("--raw", action="store_true", help="feed the prompt as is, without the chat template")
    gen.add_argument("--system", help="a system message for the chat template")
    gen.add_argument("--drafter", help="speculate with a drafter: a shipped one for a registered model (heads: "
                                       "blockwise, medusa, cerberus; or block) or a heads / block directory "
                                       "(default: plain decoding)")
    gen.add_argument("--stream", action="store_true",
                     help="print the reply as it is accepted (the loop runs in chunks of --stream-steps target calls, "
                          "one host sync per chunk; the text is the one a single run gives)")
    gen.add_argument("--stream-steps", type=_positive_int, default=4, help="target calls per streamed chunk "
                                                                           "(default: %(default)s)")
    gen.add_argument("--compare-plain", action="store_true",
                     help="with --drafter: also decode plain, print the speedup and whether the tokens agree")
    gen.add_argument("--apar", action="store_true",
                     help="APAR: the model (one fine-tuned to fork) writes its answer in parallel streams; prints the "
                          "reassembled answer, the streams, steps and tokens per step, and the time against plain "
                          "decoding of its base model")
    gen.add_argument("--max-streams", type=_positive_int, default=4,
                     help="with --apar: streams per prompt at most (default: %(default)s)")

    bench = sub.add_parser("bench", parents=[shared["sampling_runs"], shared["compiling"], shared["tree"]],
                           help="benchmark every decoding method against plain decoding on Spec-Bench",
                           description="Times each method (--methods) interleaved with plain decoding, prompt batch "
                                       "by prompt batch, on Spec-Bench (a stratified sample; --full: all 480), checks "
                                       "greedy tokens against plain decoding's (exit status 1 if any differ), and "
                                       "writes bench.json, bench.md and plots into --out.")
    add_model_flag(bench, default=DEMO_MODEL)
    bench.add_argument("--tokenizer", help="as for generate (default: the model's own)")
    bench.add_argument("--methods", nargs="+", metavar="METHOD",
                       help="among: " + ", ".join(BENCH_METHODS) + " (default: draft-chain medusa block-chain ngram "
                            "combined cos; plain always runs)")
    bench.add_argument("--batch", nargs="+", type=_positive_int, help="batch sizes, a run for each (default: 1 8; "
                                                                      "--smoke: 1)")
    bench.add_argument("--per-category", type=_positive_int, default=1,
                       help="Spec-Bench questions per category (13 categories; default: %(default)s)")
    bench.add_argument("--full", action="store_true", help="all 480 Spec-Bench questions")
    bench.add_argument("--spec-bench", metavar="FILE", help="Spec-Bench question.jsonl (default: $SPECTAX_SPEC_BENCH"
                                                            "/question.jsonl, else ../shared/data/spec_bench)")
    bench.add_argument("--prompt-bucket", type=_positive_int, default=512,
                       help="prompts keep their last N tokens, padded to N (default: %(default)s)")
    bench.add_argument("--repeats", type=_positive_int, default=1, help="timings per batch, the median kept")
    bench.add_argument("--out", default="spectax-bench", metavar="DIR",
                       help="where bench.json, bench.md and the PNGs go (default: %(default)s)")
    bench.add_argument("--smoke", action="store_true", help="a tiny random model drafting for itself (plain and "
                                                            "draft-chain), four short prompts, 32 new tokens: checks "
                                                            "the harness in seconds")
    bench.add_argument("--device-report", action="store_true",
                       help="add the memory-bandwidth limit (weight bytes / measured bandwidth) and each method's "
                            "decode tokens/s against it (for a GPU or TPU)")
    bench.add_argument("--reference", action="store_true",
                       help="also run Hugging Face transformers on the same prompts (batch 1, greedy): generate, "
                            "assisted generation with the draft-chain draft and k, prompt lookup (needs the [bench] "
                            "extra: torch, transformers)")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.set_defaults(max_new_tokens=64)

    train = sub.add_parser("train", help="train a drafter or the APAR adapter (`spectax train heads --help`, "
                                         "`spectax train block --help`, `spectax train apar --help`)", add_help=False)
    train.add_argument("what", choices=["heads", "block", "apar"])
    train.add_argument("rest", nargs=argparse.REMAINDER)

    sub.add_parser("list", help="list the registered model names", description="List the registered model names.")
    return parser


def use_compile_cache(args: argparse.Namespace) -> None:
    """Turns the compile caches on as the flags say (`enable_compile_cache`): --compile-cache DIR; else the directory
    JAX is already configured with; else compile/ in the spectax cache. Nothing with --no-compile-cache."""
    from spectax import programs
    from spectax.compilation import compile_cache_dir, enable_compile_cache

    if args.no_compile_cache:
        if args.compile_cache is not None:
            raise ValueError("--compile-cache and --no-compile-cache contradict each other")
        return
    configured = compile_cache_dir()
    if args.compile_cache is None and configured is not None:    # JAX's cache as configured; spectax's programs in it
        programs.enable(configured / "programs")
    else:
        enable_compile_cache(args.compile_cache)


def decode_kwargs(args: argparse.Namespace, eos, drafter) -> dict:
    """decode()'s keyword arguments from the shared decoding flags."""
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, rng=args.seed, eos_id=eos, drafter=drafter)


def timed_decode(model, prompts, args, drafter, eos):
    """One decode of `prompts` with the sampling flags, blocked on. Returns (DecodeResult, seconds without compile,
    Compiles): the compile time it ran (tracing, lowering, compiling or reading the cache) is measured and taken
    out, so nothing runs twice."""
    import jax

    import spectax
    from spectax.compilation import watch_compiles

    with watch_compiles() as compiles:
        start = time.perf_counter()
        out = jax.block_until_ready(spectax.decode(model, prompts, **decode_kwargs(args, eos, drafter)))
        seconds = time.perf_counter() - start
    return out, max(seconds - compiles.seconds, 1e-9), compiles


def stop_ids(tok, config) -> tuple[int, ...]:
    """Every token that ends a generation: the tokenizer's EOS and all of the checkpoint's end tokens
    (`ModelConfig.eos_ids`: its EOS list and the chat template's end-of-turn token)."""
    return tuple(dict.fromkeys(([tok.eos_id] if tok.eos_id is not None else []) + list(config.eos_ids)))


def pick_tokenizer(model_arg: str, tokenizer_arg: str | None):
    """The tokenizer for `--model model_arg` (and the optional `--tokenizer`); ValueError when there is none."""
    from spectax.io import hub
    from spectax.io.loader import ADAPTER_MANIFEST, adapted_tokenizer
    from spectax.io.tokenizer import from_gguf, load_tokenizer

    if tokenizer_arg is not None:
        return load_tokenizer(Path(tokenizer_arg).expanduser() if tokenizer_arg != "byte" else "byte")
    if model_arg in hub.REGISTRY:
        return hub.tokenizer(model_arg)
    path = Path(model_arg).expanduser()
    if not path.exists() and (hub.SHIPPED / path).is_dir():
        path = hub.SHIPPED / path
    if (path / ADAPTER_MANIFEST).is_file():
        return adapted_tokenizer(path)
    if path.is_file() and path.suffix == ".gguf":
        return from_gguf(path)
    if path.is_dir() and ((path / "tokenizer.json").is_file() or len(list(path.glob("*.gguf"))) == 1):
        return load_tokenizer(path)
    raise ValueError(f"no tokenizer found for {model_arg}: put a tokenizer.json (and tokenizer_config.json) in the "
                     f"model directory, or pass --tokenizer PATH")


def streamed_decode(model, prompt, args, drafter, eos, reply):
    """timed_decode for one prompt through spectax.decode_stream: prints the reply's text to stdout as it grows
    (holding back an unfinished UTF-8 character), and, on a terminal, live tokens/s and tau to stderr."""
    import spectax
    from spectax.compilation import watch_compiles

    shown = ""
    with watch_compiles() as compiles:
        start = time.perf_counter()
        for out in spectax.decode_stream(model, [prompt], steps=args.stream_steps,
                                         **decode_kwargs(args, eos, drafter)):
            n = int(out.lengths[0])
            text = reply(out.tokens[0], n).rstrip("\ufffd")
            if text.startswith(shown):
                sys.stdout.write(text[len(shown):])
                sys.stdout.flush()
                shown = text
            if sys.stderr.isatty():
                busy = max(time.perf_counter() - start - compiles.seconds, 1e-9)
                sys.stderr.write(f"\r[spectax] {n} tokens, {n / busy:.1f} tokens/s, tau {out.stats.tau:.2f}")
        seconds = time.perf_counter() - start
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    final = reply(out.tokens[0], int(out.lengths[0]))
    sys.stdout.write(final[len(shown):] if final.startswith(shown) else "\n" + final)
    return out, max(seconds - compiles.seconds, 1e-9), compiles


def _prompts(args: argparse.Namespace) -> list[str]:
    if args.batch_file is None:
        return [sys.stdin.read() if args.prompt == "-" else args.prompt]
    path = Path(args.batch_file).expanduser()
    if not path.is_file():
        raise ValueError(f"--batch-file {path} is not a file")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"--batch-file {path} holds no prompt")
    return lines


def _generate_apar(args: argparse.Namespace, model, texts, prompts, eos, reply) -> int:
    """`generate --apar`: APAR decoding of the prompts, then plain decoding of the base model, both timed once."""
    from spectax import apar
    from spectax.compilation import watch_compiles
    from spectax.io.loader import ADAPTER_MANIFEST, load_adapted_base

    if model.config.apar_ids is None:
        raise ValueError(f"{args.model} has no APAR control tokens: --apar needs a model fine-tuned to fork (e.g. "
                         f"checkpoints/smollm2-135m-instruct/apar)")
    from spectax.io import hub

    path = Path(args.model).expanduser()
    path = hub.SHIPPED / path if not path.exists() and (hub.SHIPPED / path).is_dir() else path
    base = load_adapted_base(path) if (path / ADAPTER_MANIFEST).is_file() else model
    with watch_compiles() as compiles:
        start = time.perf_counter()
        out = apar.decode(model, prompts, args.max_new_tokens, max_streams=args.max_streams, eos_id=eos,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, rng=args.seed)
        seconds = max(time.perf_counter() - start - compiles.seconds, 1e-9)
    replies = [reply(seq, len(seq)) for seq in out.sequences]
    if args.batch_file is None:
        print(replies[0])
    else:
        for text, answer, seq, streams in zip(texts, replies, out.sequences, out.streams):
            print(json.dumps({"prompt": text, "reply": answer, "tokens": len(seq), "streams": int(streams)},
                             ensure_ascii=False))
    plain, plain_seconds, _ = timed_decode(base, prompts, args, None, eos)
    n, steps = sum(map(len, out.sequences)), out.stats.target_calls
    print(f"[spectax] apar: {n} tokens in {seconds:.2f} s ({n / seconds:.1f} tokens/s), {int(out.streams.sum())} "
          f"streams, {steps} steps ({max(map(len, out.sequences)) / max(steps, 1):.2f} tokens per step of the "
          f"longest answer; compile {compiles.seconds:.1f} s left out); plain decoding of the base model: "
          f"{int(plain.lengths.sum())} tokens in {plain_seconds:.2f} s: {plain_seconds / seconds:.2f}x",
          file=sys.stderr)
    return 0


def _generate(args: argparse.Namespace) -> int:
    import spectax

    if args.raw and args.system is not None:
        raise ValueError("--system needs the chat template; it cannot be combined with --raw")
    if args.stream and args.batch_file is not None:
        raise ValueError("--stream prints one reply as it grows: it cannot be combined with --batch-file")
    if args.compare_plain and args.drafter is None:
        raise ValueError("--compare-plain compares a --drafter with plain decoding: give --drafter")
    if args.apar and (args.stream or args.drafter is not None or args.compare_plain):
        raise ValueError("--apar runs alone: without --stream, --drafter or --compare-plain (it always compares "
                         "with plain decoding of the base model)")
    texts = _prompts(args)
    use_compile_cache(args)
    model = spectax.load(args.model)
    tok = pick_tokenizer(args.model, args.tokenizer)
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} ids but the model's vocabulary has only "
                         f"{model.config.vocab_size}: they do not belong together")
    system = [{"role": "system", "content": args.system}] if args.system is not None else []
    prompts = [tok.encode(text, add_bos=bool(getattr(tok, "add_bos_token", False))) if args.raw
               else tok.encode_chat(system + [{"role": "user", "content": text}]) for text in texts]
    if not all(prompts):
        raise ValueError("a prompt is empty")
    eos = stop_ids(tok, model.config)
    drafter = with_tree(None if args.drafter is None else pick_drafter(args.model, args.drafter), args.tree)

    def reply(row, n: int) -> str:
        new = [int(t) for t in row[:n]]
        return tok.decode(new[:-1] if new and new[-1] in eos else new, skip_special_tokens=True)

    if args.apar:
        return _generate_apar(args, model, texts, prompts, eos, reply)
    out, seconds, compiles = (streamed_decode(model, prompts[0], args, drafter, eos, reply) if args.stream
                              else timed_decode(model, prompts, args, drafter, eos))
    lengths = [int(n) for n in out.lengths]
    replies = [reply(row, n) for row, n in zip(out.tokens, lengths)]
    if args.stream:
        print()
    elif args.batch_file is None:
        print(replies[0])
    else:
        for text, reply, n in zip(texts, replies, lengths):
            print(json.dumps({"prompt": text, "reply": reply, "tokens": n}, ensure_ascii=False))
    n = sum(lengths)
    cached = "".join([f", {compiles.cache_hits} of {compiles.programs} programs read from the compile cache"
                      if compiles.programs else ", nothing compiled",
                      f", {compiles.loaded} run from the program store" if compiles.loaded else ""])
    print(f"[spectax] {n} tokens in {seconds:.2f} s: {n / seconds:.1f} tokens/s (prefill {sum(map(len, prompts))} "
          f"prompt tokens + decode; compile {compiles.seconds:.1f} s left out{cached})"
          + ("" if drafter is None else f"; tau {out.stats.tau:.2f} tokens per target call"), file=sys.stderr)
    if args.compare_plain:
        plain, plain_seconds, _ = timed_decode(model, prompts, args, None, eos)
        same = bool((plain.tokens == out.tokens).all())
        print(f"[spectax] plain: {int(plain.lengths.sum())} tokens in {plain_seconds:.2f} s; speedup "
              f"{plain_seconds / seconds:.2f}x; tokens {'identical' if same else 'differ'}"
              + ("" if args.temperature == 0 else " (sampled: they need not agree)"), file=sys.stderr)
        if args.temperature == 0 and not same:
            return 1
    return 0


def with_tree(drafter, spec: str | None):
    """`drafter` with the tree of `--tree SPEC` (the drafter's own without one). ValueError for a tree without a
    drafter, a bad spec, or "optimal" (which `spectax bench` calibrates)."""
    if spec is None:
        return drafter
    from spectax.bench.methods import parse_tree

    if drafter is None:
        raise ValueError("--tree sets a drafter's tree: give --drafter")
    tree = parse_tree(spec)
    if tree == "optimal":
        raise ValueError('--tree optimal is calibrated by `spectax bench --tree optimal`; generate takes "chain:K" '
                         'or "kary:B1,B2,..."')
    return drafter.replace(tree=tree)


def pick_drafter(model_arg: str, drafter: str):
    """The drafter for `--drafter`: a shipped one of a registered model (a heads kind or "block"), or a drafter
    directory (heads or block)."""
    from spectax.io import hub

    path = Path(drafter).expanduser()
    if any((path / m).is_file() for m in hub.DRAFTER_MANIFESTS):
        return hub.load_drafter(path)
    if model_arg not in hub.REGISTRY:
        raise ValueError(f"--drafter {drafter!r} is not a drafter directory, and shipped drafters exist only for "
                         f"registered models")
    return hub.load_drafter(hub.shipped_drafter(model_arg, drafter))


def _demo(args: argparse.Namespace) -> int:
    import spectax
    from spectax.io import hub

    use_compile_cache(args)
    model = spectax.load(DEMO_MODEL)
    tok = hub.tokenizer(DEMO_MODEL)
    drafted = with_tree(pick_drafter(DEMO_MODEL, args.drafter), args.tree)
    ids = tok.encode_chat([{"role": "user", "content": args.prompt}])
    eos = stop_ids(tok, model.config)
    runs = {name: timed_decode(model, [ids], args, drafter, eos)
            for name, drafter in (("plain", None), (f"{args.drafter} drafter", drafted))}
    base = runs["plain"][1]
    for name, (out, seconds, compiles) in runs.items():
        n = int(out.lengths[0])
        new = [int(t) for t in out.tokens[0, :n]]
        print(f"--- {name}: {n} tokens in {seconds:.2f} s, {n / seconds:.1f} tokens/s, speedup "
              f"{base / seconds:.2f}x, tau {out.stats.tau:.2f} tokens per target call (compile {compiles.seconds:.1f}"
              f" s left out)")
        print(tok.decode(new[:-1] if new and new[-1] in eos else new, skip_special_tokens=True))
    (a, _, _), (b, _, _) = runs.values()
    same = bool((a.tokens == b.tokens).all())
    print(f"--- outputs identical: {same} (CPU timings are noisy)")
    return 0 if same or args.temperature != 0 else 1


def _bench(args: argparse.Namespace) -> int:
    from spectax.bench.run import main as bench_main

    use_compile_cache(args)
    return bench_main(args)


def _list() -> int:
    from spectax.io import hub

    for name, description in hub.list_models().items():
        print(f"{name}\t{description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the command line `argv` (default: sys.argv[1:]); returns the exit status (argparse exits itself)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "generate" and (args.prompt is None) == (args.batch_file is None):
        parser.error("generate takes either a prompt or --batch-file FILE (one prompt per line)")
    try:
        if args.command == "list":
            return _list()
        if args.command == "demo":
            return _demo(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "train":
            if args.what == "block":
                from spectax.train.block import main as train_main
            elif args.what == "apar":
                from spectax.train.apar import main as train_main
            else:
                from spectax.train.heads import main as train_main
            train_main(args.rest)
            return 0
        return _generate(args)
    except ValueError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except RuntimeError as e:  # spectax.io.hub.HubError: a named model could not be fetched
        from spectax.io.hub import HubError

        if not isinstance(e, HubError):
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    sys.exit(main())
