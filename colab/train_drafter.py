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
# # Train a drafter: Medusa heads by self-distillation
#
# Proposal heads read the target's last hidden state and guess the tokens after the next one. They are trained on
# the target's **own** greedy answers (self-distillation: the target stays frozen), so what they learn is exactly
# what speculation needs, to predict the target. The steps, each a function of `spectax.train`:
#
# 1. `distill.generate_ids`: greedy answers to training prompts, written as resumable shards;
# 2. `distill.cache_hidden`: the target's final hidden state at every answer position;
# 3. `heads.train`: AdamW on the heads' cross-entropy, `heads.evaluate`: top-k accuracy per head on held-out
#    answers;
# 4. decode with the trained heads and compare tau with plain decoding.
#
# The command line does the same: `python -m spectax.train.distill generate / hidden`, then `spectax train heads`.
# `SMALL` (`SPECTAX_SMALL=1`, as the tests set it) uses a tiny random model and a handful of training steps;
# otherwise SmolLM2-135M-Instruct is distilled on 64 prompts and the heads train for a couple of minutes.

# %%
import os

SMALL = os.environ.get("SPECTAX_SMALL") == "1"   # or set it by hand: SMALL = True
N_TRAIN, N_EVAL = (24, 8) if SMALL else (64, 16)  # prompts
MAX_NEW_TOKENS = 32 if SMALL else 128              # per answer
NUM_HEADS = 3
STEPS = 40 if SMALL else 300

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
import tempfile
import time

import jax
import matplotlib.pyplot as plt
import numpy as np

import spectax
from spectax.cli import stop_ids
from spectax.drafters import Heads
from spectax.io import hub
from spectax.io.tokenizer import ByteTokenizer
from spectax.train import distill
from spectax.train import heads as heads_trainer
from spectax.train.prompt_files import read_prompts, split_prompts

WORK = Path(tempfile.mkdtemp(prefix="spectax-train-drafter-"))   # data, training checkpoints, the saved heads
print(f"working in {WORK}")

# %% [markdown]
# ## The target and the prompts
# The prompt list ships with the package (`spectax/train/data/prompts.jsonl`, no download); its last 5% is held out.

# %%
NAME = "smollm2-135m-instruct"
if SMALL:
    tok = ByteTokenizer()
    target = spectax.Model.random(spectax.ModelConfig(
        arch="llama", vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=8, intermediate_size=64, max_position=1024), seed=0, scale=3.0)
    encode = lambda text: tok.encode(text[:40])                                          # noqa: E731
else:
    spectax.enable_compile_cache()
    target = spectax.load(NAME)
    tok = hub.tokenizer(NAME)
    encode = lambda text: tok.encode_chat([{"role": "user", "content": text}])          # noqa: E731
eos = stop_ids(tok, target.config)

train_prompts, eval_prompts = split_prompts(read_prompts())
train_ids = [encode(p["text"]) for p in train_prompts[:N_TRAIN]]
eval_ids = [encode(p["text"]) for p in eval_prompts[:N_EVAL]]
print(f"{len(train_ids)} training prompts, {len(eval_ids)} held out; e.g. {train_prompts[0]['text'][:80]!r}")

# %% [markdown]
# ## 1-2. Self-distillation: the target's greedy answers, then its hidden states on them

# %%
start = time.perf_counter()
for split, ids in (("train", train_ids), ("eval", eval_ids)):
    distill.generate_ids(target, ids, WORK / split, eos, max_new_tokens=MAX_NEW_TOKENS, batch=16)
    distill.cache_hidden(target, WORK / split, WORK / "hidden" / split)
shard = distill.load_shard(distill.shard_paths(WORK / "train")[0])
answer = distill.sequences(shard)[0][shard["prompt_len"][0]:]
print(f"distilled in {time.perf_counter() - start:.1f} s; first answer: {tok.decode(answer.tolist())[:200]!r}")

# %% [markdown]
# ## 3. Train the heads
# Head h learns token t + 2 + h from the hidden state at position t, over a draft vocabulary of the most frequent
# answer tokens. The same run from the command line (help below):
# `spectax train heads --data DIR --kind medusa --num-heads 3 --steps 300 --out OUT`.

# %%
try:
    heads_trainer.main(["--help"])             # what `spectax train heads --help` prints
except SystemExit:
    pass

# %%
data = heads_trainer.load_data([WORK / "hidden" / "train"], NUM_HEADS)
held_out = heads_trainer.load_data([WORK / "hidden" / "eval"], NUM_HEADS)
draft_vocab = min(128 if SMALL else 4096, target.config.vocab_size)
vocab_ids = heads_trainer.draft_vocabulary(distill.token_frequencies(WORK / "train"), draft_vocab)
cfg = heads_trainer.TrainConfig(kind="medusa", num_heads=NUM_HEADS, draft_vocab=draft_vocab, steps=STEPS,
                                batch=64 if SMALL else 256, lr=3e-3 if SMALL else 1e-3, warmup=STEPS // 10,
                                checkpoint_every=STEPS)
print(f"{len(data.hidden_XE)} training positions, {len(held_out.hidden_XE)} held out")
start = time.perf_counter()
heads = heads_trainer.train(target, data, vocab_ids, cfg, WORK / "ckpt", progress=not SMALL)
print(f"trained in {time.perf_counter() - start:.1f} s")
acc = heads_trainer.evaluate(heads, target, held_out)       # [heads, top-1 .. top-5]
acc_train = heads_trainer.evaluate(heads, target, data)
print("held-out top-1 accuracy per head:", np.round(acc[:, 0], 3), "(training positions:",
      np.round(acc_train[:, 0], 3), ")")

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
for h, (row, row_train) in enumerate(zip(acc, acc_train)):
    line, = ax.plot(np.arange(1, acc.shape[1] + 1), row, marker="o", label=f"head {h} (token t+{h + 2})")
    ax.plot(np.arange(1, acc.shape[1] + 1), row_train, ls=":", color=line.get_color())
ax.set(xlabel="top-k", ylabel="accuracy", ylim=(0, 1), title="per-head accuracy: held out (dotted: training)")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Decode with them
# `heads.save(dir)` writes a drafter directory that `Heads.load`, `spectax generate --drafter DIR` and
# `spectax.load` read. Greedy decoding with heads gives the plain tokens, in fewer target calls.

# %%
saved = heads.save(WORK / "medusa")
heads = Heads.load(saved)
plain = spectax.decode(target, eval_ids, MAX_NEW_TOKENS, eos_id=eos)
drafted = spectax.decode(target, eval_ids, MAX_NEW_TOKENS, drafter=heads, eos_id=eos)
same = bool((np.asarray(plain.tokens) == np.asarray(drafted.tokens)).all())
print(f"tau with the trained heads: {drafted.stats.tau:.2f} tokens per target call (plain: 1.00); acceptance per "
      f"depth {np.round(drafted.stats.acceptance_per_depth, 2)}; tokens identical to plain: {same}")
print(f"devices: {jax.devices()}")
