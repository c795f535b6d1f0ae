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
# # Sharded decoding on a device mesh (TPU, or 8 fake CPU devices)
#
# The same jitted decoding loop runs on a `(data, model)` mesh through `jax.sharding`: batch rows are split over
# `"data"`, attention heads, MLP units and the vocabulary over `"model"`. The params are sharded as they load (each
# device receives only its slices), and greedy tokens match an unsharded decode.
#
# On a TPU VM (Colab: *Runtime > Change runtime type > TPU*) this uses the real chips. Anywhere else the first cell
# asks XLA for 8 CPU devices before JAX starts, so the notebook runs on a laptop or in CI. `SMALL`
# (`SPECTAX_SMALL=1`, as the tests set it) uses a tiny random model instead of SmolLM2-135M-Instruct.

# %%
import glob
import os
import sys

SMALL = os.environ.get("SPECTAX_SMALL") == "1"   # or set it by hand: SMALL = True
MAX_NEW_TOKENS = 16 if SMALL else 64

# No TPU here: fake 8 CPU devices. XLA reads this flag once, when JAX starts its backends, so it must be set before
# the first JAX computation (restart the runtime if JAX ran in this process already).
TPU = bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") or os.environ.get("TPU_NAME")
           or os.environ.get("COLAB_TPU_ADDR"))
if not TPU and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    if "jax" in sys.modules:
        print("JAX was imported before this cell: restart the runtime for the 8 CPU devices to appear")
print("TPU found" if TPU else f"no TPU: XLA_FLAGS={os.environ['XLA_FLAGS']}")

# %%
# Install spectax unless it is importable: from this checkout when the notebook runs inside one (working directory
# the repository root or colab/), else from $SPECTAX_SOURCE (any pip requirement: a path, a wheel, a git URL).
# On a TPU VM, JAX itself needs its TPU build: pip install "jax[tpu]".
import importlib.util
import subprocess
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

import jax
import numpy as np

import spectax
from spectax import DraftTree
from spectax.drafters import Heads, NGram
from spectax.io import hub
from spectax.sharding import make_mesh

devices = jax.devices()
if len(devices) < 2:            # e.g. one GPU: use the fake CPU devices for the mesh
    devices = jax.devices("cpu")
print(f"{len(devices)} devices: {devices[0].platform} ({devices[0].device_kind})")

# %% [markdown]
# ## The mesh
# `make_mesh(data=, model=)` arranges the first `data * model` devices. A dimension that does not divide its mesh
# axis (SmolLM2's 3 kv heads on a model axis of 4) is replicated along it, with a warning: that is allowed, XLA
# moves whatever the mixed layout needs.

# %%
n = len(devices)
model_axis = next(m for m in (4, 2, 1) if n % m == 0)
mesh = make_mesh(data=n // model_axis, model=model_axis, devices=devices)
print(mesh)

# %% [markdown]
# ## Load, sharded
# `spectax.load(path_or_name, mesh=mesh)` places every param shard by shard. (The tiny model of `SMALL` is saved to
# a temporary checkpoint first, so it is loaded the same way as a real one.)

# %%
NAME = "smollm2-135m-instruct"
if SMALL:
    tiny = spectax.Model.random(spectax.ModelConfig(
        arch="llama", vocab_size=96, hidden_size=32, num_layers=2, num_heads=8, num_kv_heads=4, head_dim=8,
        intermediate_size=64, max_position=512), seed=0, scale=3.0)
    path = spectax.save(tiny, Path(tempfile.mkdtemp()) / "tiny")
else:
    spectax.enable_compile_cache()
    path = NAME
model = spectax.load(path, mesh=mesh)

for keypath, leaf in jax.tree_util.tree_leaves_with_path(model.params)[:6]:
    print(f"{jax.tree_util.keystr(keypath):60s} {str(leaf.shape):18s} {leaf.sharding.spec}")

# %% [markdown]
# ## Decode, sharded
# The batch must divide the data axis. `decode(..., mesh=mesh)` pins the KV caches and the loop state to their
# shardings; the rest is XLA's SPMD partitioner. Drafters are placed on the mesh too.

# %%
if SMALL:
    prompts = [list(np.random.default_rng(b).integers(1, 96, size=4 + b)) for b in range(2 * mesh.shape["data"])]
    drafter = NGram(tree=DraftTree.chain(4))
    eos = None
else:
    tok = hub.tokenizer(NAME)
    questions = ["What is the capital of France?", "Name three primary colours.", "Why do cats purr?",
                 "Write a haiku about rain."]
    prompts = [tok.encode_chat([{"role": "user", "content": q}])
               for q in (questions * mesh.shape["data"])[:2 * mesh.shape["data"]]]
    drafter = Heads.load(hub.shipped_drafter(NAME, "medusa"))
    eos = model.config.eos_ids

out = spectax.decode(model, prompts, MAX_NEW_TOKENS, drafter=drafter, eos_id=eos, mesh=mesh)
print(f"tokens {out.tokens.shape}, sharded as {out.tokens.sharding.spec}; tau {out.stats.tau:.2f}")
if not SMALL:
    for row, n_row in zip(np.asarray(out.tokens), np.asarray(out.lengths)):
        print(repr(tok.decode(row[:n_row].tolist(), skip_special_tokens=True)))

# %% [markdown]
# ## The same tokens as one device
# Greedy tokens are identical on every mesh (the logits may differ in the last bits, because a sharded matmul sums
# in another order, so only an exact tie could flip a token).

# %%
single = spectax.decode(spectax.load(path), prompts, MAX_NEW_TOKENS, drafter=drafter, eos_id=eos)
same = bool((np.asarray(single.tokens) == np.asarray(out.tokens)).all())
print(f"sharded tokens == unsharded tokens: {same}")
assert same
