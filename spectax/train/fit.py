"""The training loop the drafter trainers share: optax AdamW with warmup + cosine decay, a batch order that is a
function of (seed, step) only, a progress bar, and resumable orbax checkpoints (params + optimiser state + step), so a
resumed run follows the uninterrupted run's trajectory bit for bit."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """What the shared loop reads of a trainer's config (each trainer's TrainConfig extends it)."""

    steps: int = 1000
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    checkpoint_every: int = 100


def optimizer(cfg: FitConfig) -> optax.GradientTransformation:
    """AdamW at cfg.lr, linear warmup over cfg.warmup steps, cosine decay to 5% at cfg.steps."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup, max(cfg.steps, cfg.warmup + 1),
                                                  end_value=cfg.lr * 0.05)
    return optax.adamw(schedule, weight_decay=cfg.weight_decay)


def batch_rows(n_rows: int, cfg: FitConfig, step: int) -> np.ndarray:
    """int [cfg.batch]: the rows of step `step`, a function of (cfg.seed, step) only: epoch e is one permutation."""
    per_epoch = max(n_rows // cfg.batch, 1)
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng((cfg.seed, epoch)).permutation(n_rows)
    return perm[i * cfg.batch:(i + 1) * cfg.batch]


def fit(params, loss_fn, batch_fn, cfg: FitConfig, ckpt_dir, desc: str, log=print, progress: bool = True,
        stop_at: int | None = None):
    """Minimises loss_fn(params, *batch_fn(step)) for steps 0 .. cfg.steps - 1 (resuming from the newest checkpoint
    in ckpt_dir; `stop_at`: end this call after that step, checkpointed). cfg (all its fields) is written to
    ckpt_dir/train_config.json. Returns the params."""
    opt = optimizer(cfg)
    state = {"params": params, "opt_state": opt.init(params), "step": jnp.int32(0)}
    ckpt_dir = Path(ckpt_dir).absolute()
    manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
    (ckpt_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    if manager.latest_step() is not None:
        state = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(state))
        log(f"resumed from step {int(state['step'])}")

    @jax.jit
    def train_step(params, opt_state, *batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start, t0 = int(state["step"]), time.perf_counter()
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, desc=desc, file=sys.stderr, disable=not progress)
    params, opt_state = state["params"], state["opt_state"]
    for step in bar:
        params, opt_state, loss = train_step(params, opt_state, *batch_fn(step))
        if (step + 1) % 50 == 0:
            bar.set_postfix(loss=f"{float(loss):.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
            manager.save(step + 1, args=ocp.args.StandardSave(
                {"params": params, "opt_state": opt_state, "step": jnp.int32(step + 1)}))
    manager.wait_until_finished()
    log(f"trained steps {start}..{end} of {cfg.steps} in {time.perf_counter() - t0:.0f} s")
    return params
