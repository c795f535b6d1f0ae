"""Block sizes of the tree-attention kernels: one frozen, validated, hashable config per call (a static argument),
defaults per backend and per (new tokens T, head_dim), and the tiling checks the backends' compilers make but
interpret mode does not.

Rows of a kernel's query tile are the folded (query head of a kv head group, new token) pairs, m = g * T + t, so
grouped-query heads fill the tile's rows instead of leaving the matrix unit mostly idle at T = 1.
"""

from __future__ import annotations

import dataclasses

import numpy as np

BACKENDS = ("cpu", "gpu", "tpu")
_LANES = 128  # TPU vreg lanes: the minor dim of a block is a multiple of this or the array's whole dim


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """block_q: folded query rows per tile (query heads per kv head x new tokens). block_kv: cache slots per block.
    edge_block_kv: the XLA path's smaller blocks at the rows' ends (slots not live for every row). num_splits: the
    GPU kernel's split-K, programs per (row, kv head, query tile) over the cache length, merged by log-sum-exp; 0
    chooses from the shapes (enough programs to fill the device at small batch)."""

    block_q: int = 128
    block_kv: int = 512
    edge_block_kv: int = 128
    num_splits: int = 0

    def __post_init__(self):
        for name in ("block_q", "block_kv", "edge_block_kv"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BlockSizes.{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.num_splits, (int, np.integer)) or isinstance(self.num_splits, bool) \
                or self.num_splits < 0:
            raise ValueError(f"BlockSizes.num_splits must be an int >= 0 (0 = auto), got {self.num_splits!r}")
        if self.edge_block_kv > self.block_kv:
            raise ValueError(f"BlockSizes.edge_block_kv ({self.edge_block_kv}) must be <= block_kv "
                             f"({self.block_kv})")

    @classmethod
    def default(cls, backend: str, num_new: int, head_dim: int) -> "BlockSizes":
        """Defaults for `backend` ("cpu" = the XLA path, "gpu", "tpu") at T = `num_new` new tokens per row.

        CPU: big blocks amortise XLA:CPU's per-dot cost (measured on the 2-core EPYC, see README). TPU: 512-slot
        blocks (a multiple of 128 lanes, 128-256 KiB of bf16 K/V per block at head_dim 64-128) and up to 256 folded
        rows, halved for long trees at head_dim 128 to stay well inside VMEM. GPU (Triton): 16-64 query rows and
        64-slot blocks keep the [block_q, head_dim] accumulator and the K/V tiles in registers / shared memory.
        These are starting points, not tuned on hardware (no GPU or TPU was available when they were set).
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "cpu":
            return cls(block_q=128, block_kv=512, edge_block_kv=128)
        if backend == "tpu":
            block_kv = 512 if num_new <= 16 or head_dim <= 64 else 256
            return cls(block_q=256, block_kv=block_kv, edge_block_kv=128)
        return cls(block_q=16 if num_new <= 4 else 64, block_kv=64 if head_dim >= 128 else 128, edge_block_kv=64)


def check_tpu_block(name: str, block_shape: tuple[int, ...], array_shape: tuple[int, ...], dtype) -> None:
    """ValueError unless `block_shape` tiles `array_shape` the way Mosaic requires of its last two dims: the minor
    dim a multiple of 128 lanes, the second-minor a multiple of 8 sublanes (16 for 2-byte types, which pack two rows
    per sublane), each unless it spans the array's whole dim. Interpret mode accepts any block; this check makes
    the same call fail on CPU as it would on a TPU."""
    sublanes = 8 * max(1, 4 // np.dtype(dtype).itemsize)
    for axis, unit in ((-1, _LANES), (-2, sublanes)):
        block, full = block_shape[axis], array_shape[axis]
        if block != full and block % unit:
            raise ValueError(f"TPU block {name} {tuple(block_shape)} of array {tuple(array_shape)} "
                             f"({np.dtype(dtype).name}): dim {axis} is {block}, neither the whole dim ({full}) nor a "
                             f"multiple of {unit}")


def check_gpu_block(name: str, size: int) -> None:
    """ValueError unless a Triton tile dim is a power of two >= 16 (tl.dot's smallest tile)."""
    if size < 16 or size & (size - 1):
        raise ValueError(f"GPU tile dim {name} must be a power of two >= 16, got {size}")
