"""One process of tests/test_sharding.py's two-process run: argv = process id, coordinator port, checkpoint, output.

Each process has 4 CPU devices; jax.distributed joins them into 8. Both load the checkpoint onto a (2, 4) mesh that
spans the processes, decode (chain drafts, sampled), and process 0 writes the gathered tokens to the output .npz."""

import os
import sys

# the test process's compile flags (tests/conftest.py: fast compiles), with 4 devices in place of its 8
os.environ["XLA_FLAGS"] = " ".join([flag for flag in os.environ.get("XLA_FLAGS", "").split()
                                    if not flag.startswith("--xla_force_host_platform_device_count")]
                                   + ["--xla_force_host_platform_device_count=4"])

import jax  # noqa: E402

pid, port, ckpt, out_path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid,
                           initialization_timeout=120)

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import spectax  # noqa: E402
from spectax.sharding import make_mesh  # noqa: E402

assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 8, 4)
prompts = [[5, 17, 3], [9, 9, 9, 9, 9, 2], [40, 41], [7, 8, 9, 10, 11, 12, 13]]
mesh = make_mesh(data=2, model=4)
model = spectax.load(ckpt, mesh=mesh)
assert not model.params["lm_head"]["kernel"].is_fully_addressable          # the params span both processes
drafter = spectax.drafters.DraftModel(model, tree=spectax.DraftTree.chain(3))
out = spectax.decode(model, prompts, 8, drafter=drafter, temperature=1.0, rng=3, mesh=mesh)
tokens = np.asarray(multihost_utils.process_allgather(out.tokens, tiled=True))
if pid == 0:
    np.save(out_path, tokens)
jax.distributed.shutdown()
