"""An endless, resumable, rank-sharded sampler for iteration-based epochs.

Pass p over the data visits a permutation seeded by (seed + p); rank r of W takes every W-th
index of it (the permutation is padded by wrapping so all ranks get the same count).  It yields
draw keys `p * n + index` so that datasets can seed per-draw randomness from the key.  Starting
at `start` (samples already consumed by this rank) skips arithmetically, without loading data.
"""

from __future__ import annotations

from typing import Iterator

import torch


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Endless keys for one rank; see module docstring."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1, seed: int = 0, start: int = 0, shuffle: bool = True):
        if num_samples <= 0:
            raise ValueError("the sampler needs at least one sample")
        self.n = num_samples
        self.rank = rank
        self.world = world_size
        self.seed = seed
        self.start = start
        self.shuffle = shuffle
        self.per_rank = -(-num_samples // world_size)

    def _rank_indices(self, epoch_pass: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch_pass)
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        total = self.per_rank * self.world
        perm = (perm * (-(-total // self.n)))[:total]
        return perm[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        epoch_pass, offset = divmod(self.start, self.per_rank)
        while True:
            indices = self._rank_indices(epoch_pass)
            for index in indices[offset:]:
                yield epoch_pass * self.n + index
            epoch_pass += 1
            offset = 0
