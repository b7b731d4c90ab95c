"""Data order and per-sample randomness that make a resumed run replay the uninterrupted one exactly.

- :class:`ResumableSampler`: DistributedSampler (shuffle seeded by ``seed + epoch``, drop_last) that can
  start part-way into an epoch, so a run resumed from a mid-epoch checkpoint skips the batches it did.
- :class:`SeededSamples`: sample ``i`` of epoch ``e`` is drawn with its own RNG seeded by
  ``(seed, e, i)``, so random augmentations do not depend on worker count, batch position or interruptions.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """DistributedSampler (per-epoch seeded shuffle, drop_last) that can start part-way into an epoch.

    ``min_samples`` (total over all processes) stretches a short epoch: the epoch then walks through
    as many seeded permutations of the dataset as it needs, back to back, so a small labeled set still gets
    a schedule's worth of steps while every epoch-valued setting (lr steps, evaluation) keeps its meaning.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True,
                 drop_last: bool = True, min_samples: int = 0):  # fmt: skip
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.start_index = 0
        self.stretched = min_samples > self.total_size
        if self.stretched:
            self.num_samples = -(-min_samples // num_replicas)
            self.total_size = self.num_samples * num_replicas

    def __iter__(self):
        if not self.stretched:
            return iter(list(super().__iter__())[self.start_index :])
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.dataset)
        rounds = -(-self.total_size // n)
        order = torch.cat([torch.randperm(n, generator=g) if self.shuffle else torch.arange(n) for _ in range(rounds)])
        mine = order[: self.total_size][self.rank : self.total_size : self.num_replicas].tolist()
        return iter(mine[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


class SeededSamples(Dataset):
    """Wraps a dataset so sample ``i`` of epoch ``e`` is drawn with its own RNG seeded by (seed, e, i)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        sample_seed = int(np.random.SeedSequence([self.seed, self.epoch, int(i)]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.dataset[i]
