"""Endless, resumable, rank-sharded samplers for iteration-based epochs.

`ResumableSampler`: pass p over the data visits a permutation seeded by (seed + p); rank r of W
takes every W-th index of it (the permutation is padded by wrapping so all ranks get the same
count).  It yields draw keys `p * n + index` so that datasets can seed per-draw randomness from
the key.  Starting at `start` (samples already consumed by this rank) skips arithmetically,
without loading data.

`LengthGroupedSampler`: the same passes, permutations and draw keys, reordered so that each
micro-batch holds draws of similar token length (padding-free batches at the same global batch
size).  The idea is Hugging Face's `group_by_length` (LLaVA's length-grouped sampler): cut the
pass's permutation into mega-batches, sort each by length, cut it into batches.  It is written
here because those samplers are neither endless, nor resumable from a step, nor sharded the
way the runner shards: here pass p is cut into global batches of W x B draws (W ranks, B draws
per micro-batch), rank r takes draws [r*B, (r+1)*B) of each, and the order of the global
batches within a mega-batch is shuffled, all from (seed + p) alone.  So W ranks of batch B read
exactly the global batches of one process of batch W x B, every draw comes once per pass, and
`start` skips arithmetically as above.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

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


class LengthGroupedSampler(torch.utils.data.Sampler[int]):
    """Endless keys for one rank, in micro-batches of similar token length; see module docstring.

    Args:
        lengths: epoch pass -> the token length of each of the `num_samples` draws of that pass
            (index i is draw key `pass * num_samples + i`); called once per pass.
        num_samples: samples per pass (n).
        batch_size: draws per micro-batch on each rank (B).
        rank, world_size: this rank and the number of ranks (W).
        seed: seeds the permutation of each pass (as ResumableSampler) and the batch order.
        start: draws this rank already consumed (a multiple of B when resuming at a step).
        mega_batches: global batches (W x B draws) per mega-batch that is sorted by length; more
            groups tighter (less padding), fewer keeps batches closer to a random draw.
    """

    def __init__(self, lengths: Callable[[int], Sequence[int] | torch.Tensor], num_samples: int, batch_size: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, start: int = 0, mega_batches: int = 64):
        if num_samples <= 0:
            raise ValueError("the sampler needs at least one sample")
        if batch_size < 1 or mega_batches < 1:
            raise ValueError(f"batch_size and mega_batches must be >= 1, got {batch_size} and {mega_batches}")
        self.lengths = lengths
        self.n = num_samples
        self.batch = batch_size
        self.rank = rank
        self.world = world_size
        self.seed = seed
        self.start = start
        self.global_batch = batch_size * world_size
        self.mega = mega_batches * self.global_batch
        self.per_rank = -(-num_samples // self.global_batch) * batch_size

    def global_batches(self, epoch_pass: int) -> torch.Tensor:
        """(num_batches, W x B) sample indices of pass `epoch_pass`, in the order they are read."""
        g = torch.Generator().manual_seed(self.seed + epoch_pass)
        perm = torch.randperm(self.n, generator=g)
        total = self.per_rank * self.world
        perm = perm.repeat(-(-total // self.n))[:total]
        lengths = torch.as_tensor(self.lengths(epoch_pass), dtype=torch.long)
        if lengths.shape != (self.n,):
            raise ValueError(f"lengths of pass {epoch_pass} have shape {tuple(lengths.shape)}, expected ({self.n},)")
        out = []
        for mega in perm.split(self.mega):
            order = torch.sort(lengths[mega], descending=True, stable=True).indices
            batches = mega[order].view(-1, self.global_batch)
            out.append(batches[torch.randperm(len(batches), generator=g)])
        return torch.cat(out)

    def __iter__(self) -> Iterator[int]:
        epoch_pass, offset = divmod(self.start, self.per_rank)
        while True:
            mine = self.global_batches(epoch_pass)[:, self.rank * self.batch : (self.rank + 1) * self.batch]
            for index in mine.reshape(-1)[offset:].tolist():
                yield epoch_pass * self.n + index
            epoch_pass += 1
            offset = 0
