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
# # spectax inside your own JAX program: `Decoder` under `jit`, `lax.scan` and `vmap`
#
# `spectax.decode` validates its inputs, picks shape buckets and calls a `spectax.Decoder`. Build the `Decoder`
# yourself and the whole speculative decoding loop becomes a pure function of arrays and pytrees: params, prompts,
# keys and temperatures may all be traced. Here it drives a toy **RL rollout loop**: one `lax.scan` iteration
# decodes a batch (sampled, speculating with a frozen drafter), scores it with a toy reward, and takes a REINFORCE
# step on the policy's params: the whole loop is one compiled program. Then one `vmap` sweeps the sampling
# temperature.
#
# `SMALL` (`SPECTAX_SMALL=1`, as the tests set it) uses a tiny random model and a few rounds; otherwise the policy
# is SmolLM2-135M-Instruct (fetched once, then cached).

# %%
import os

SMALL = os.environ.get("SPECTAX_SMALL") == "1"   # or set it by hand: SMALL = True
ROUNDS = 6 if SMALL else 4
BATCH = 4
MAX_NEW_TOKENS = 12 if SMALL else 24
LEARNING_RATE = 3e-2 if SMALL else 1e-5

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
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import spectax
from spectax import DraftTree, Sampling
from spectax.drafters import DraftModel, Heads
from spectax.io import hub

# %% [markdown]
# ## A policy, a drafter and a batch of prompts
# Array prompts are right-padded: row b's tokens are `prompt_BP[b, :prompt_len_B[b]]`.

# %%
NAME = "smollm2-135m-instruct"
if SMALL:
    policy = spectax.Model.random(spectax.ModelConfig(
        arch="llama", vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
        intermediate_size=64, max_position=256), seed=0, scale=1.5)
    rows = [list(np.random.default_rng(b).integers(1, 97, size=5 + 3 * b)) for b in range(BATCH)]
    eos = None
else:
    spectax.enable_compile_cache()
    policy = spectax.load(NAME)
    tok = hub.tokenizer(NAME)
    questions = ["Name a fruit.", "Say something about the sea.", "Describe a cat.", "What is rain?"]
    rows = [tok.encode_chat([{"role": "user", "content": q}]) for q in questions[:BATCH]]
    eos = policy.config.eos_ids
P = max(len(r) for r in rows)
prompt_BP = jnp.asarray([list(r) + [0] * (P - len(r)) for r in rows], jnp.int32)
prompt_len_B = jnp.asarray([len(r) for r in rows], jnp.int32)

# A frozen drafter: its drafts are verified against the current policy, so the samples are always the current
# policy's own (lossless speculative sampling), however far the policy has moved from what the drafter knows; only
# tau drops. SMALL: a snapshot of the starting policy as draft model; SmolLM2: its shipped Medusa heads, trained
# on the starting model's hidden states.
drafter = DraftModel(policy, tree=DraftTree.chain(3)) if SMALL else Heads.load(hub.shipped_drafter(NAME, "medusa"))
dec = spectax.Decoder(policy, drafter, max_new_tokens=MAX_NEW_TOKENS, max_prompt_len=P,
                      sampling=Sampling(temperature=1.0), eos_id=eos)
print(dec)

# %% [markdown]
# ## One decode under `jax.jit`
# The `Decoder` is a static, hashable object (validated on the host once); the call takes the model and drafter as
# arguments, so their params are ordinary traced inputs.

# %%
@jax.jit
def rollout(model, key):
    return dec(model, prompt_BP, prompt_len_B, key)


out = rollout(policy, jax.random.key(0))
print("tokens", out.tokens.shape, "lengths", out.lengths, f"tau {out.stats.tau:.2f}")

# %% [markdown]
# ## An RL-style loop in one program
# Each round: decode a batch with the round's key, reward each row by the share of even token ids in its answer
# (a toy), and take one REINFORCE step (advantage = reward - batch mean) on the policy. The answer's log-probs come
# from one full causal forward over prompt + answer (`model.logits`).

# %%
opt = optax.adam(LEARNING_RATE)


def answer_tokens(out):
    """int32 [B, P + N] prompt then answer for each row (right-padded rows), and bool [B, P + N - 1]: which
    next-token predictions are answer tokens."""
    t = jnp.arange(P + MAX_NEW_TOKENS)[None, :]
    in_prompt = t < prompt_len_B[:, None]
    j = jnp.clip(t - prompt_len_B[:, None], 0, MAX_NEW_TOKENS - 1)
    seq = jnp.where(in_prompt, jnp.pad(prompt_BP, ((0, 0), (0, MAX_NEW_TOKENS))),
                    jnp.take_along_axis(out.tokens, j, axis=1))
    answer = ~in_prompt & (t < (prompt_len_B + out.lengths)[:, None])
    return seq, answer[:, 1:]


def reward(out):
    valid = jnp.arange(MAX_NEW_TOKENS)[None, :] < out.lengths[:, None]
    even = (out.tokens % 2 == 0) & valid
    return even.sum(1) / jnp.maximum(valid.sum(1), 1)                       # float [B]


def one_round(carry, i):
    params, opt_state = carry
    model = policy.replace(params=params)
    out = dec(model, prompt_BP, prompt_len_B, jax.random.fold_in(jax.random.key(1), i), drafter=drafter)
    r = reward(out)
    seq, answer = answer_tokens(out)

    def loss(p):
        logp = jax.nn.log_softmax(policy.replace(params=p).logits(seq)[:, :-1], axis=-1)
        logp_tok = jnp.take_along_axis(logp, seq[:, 1:, None], axis=-1)[..., 0]
        return -jnp.mean((r - r.mean()) * jnp.sum(jnp.where(answer, logp_tok, 0.0), 1)) / MAX_NEW_TOKENS

    grads = jax.grad(loss)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    tau = out.stats.new_tokens.sum() / jnp.maximum(out.stats.row_calls.sum(), 1)
    return (optax.apply_updates(params, updates), opt_state), (r.mean(), tau)


@jax.jit
def train(params):
    return jax.lax.scan(one_round, (params, opt.init(params)), jnp.arange(ROUNDS))


(params, _), (rewards, taus) = train(policy.params)
trained = policy.replace(params=params)
for i, (r, t) in enumerate(zip(np.asarray(rewards), np.asarray(taus))):
    print(f"round {i}: mean reward {r:.3f}, tau {t:.2f}")

# %%
fig, (ax_r, ax_t) = plt.subplots(1, 2, figsize=(9, 3))
ax_r.plot(np.asarray(rewards), marker="o")
ax_r.set(title="mean reward (share of even token ids)", xlabel="round")
ax_t.plot(np.asarray(taus), marker="o", color="tab:green")
ax_t.set(title="tau with the frozen drafter", xlabel="round")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## A temperature sweep with `vmap`
# Greedy or not and top-k are fixed when the `Decoder` is built; a call's `sampling` may carry traced temperature
# and top-p values, so one compiled program decodes every temperature at once.

# %%
temperatures = jnp.asarray([0.5, 1.0, 1.5])


@jax.jit
def sweep(model, temperatures):
    def at(t):
        out = dec(model, prompt_BP, prompt_len_B, jax.random.key(2), sampling=Sampling(temperature=t))
        return reward(out).mean()
    return jax.vmap(at)(temperatures)


for t, r in zip(np.asarray(temperatures), np.asarray(sweep(trained, temperatures))):
    print(f"temperature {t:.1f}: mean reward {r:.3f}")
