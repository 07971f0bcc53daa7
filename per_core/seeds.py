"""Independent random streams derived from one run seed.

A run has one user-facing ``seed``; the trainer draws from seven streams (:data:`STREAMS`), each
seeded with :func:`stream_seed`. The seed of a stream is a 64-bit hash of (stream, rank, seed), so

- two purposes of one run never share a stream (before, the model's initialization, the data order,
  PER's slices and the recorder were all seeded with ``seed`` itself);
- two runs never share a stream (before, the augmentation of seed s, ``seed + 1``, was the data
  order of seed s + 1);
- seeds s and s + 2**32 are different runs (torch's CPU generator keeps only the low 32 bits of a
  seed, so seeding it with the run's seed directly repeated every run 2**32 apart);
- data-parallel ranks share the streams that must agree (``rank=0`` for all of them) and get
  independent ones where they must differ.

========= ======== ===========================================================================
stream    per rank what draws from it
========= ======== ===========================================================================
init      no       the model's initial weights (``torch.manual_seed``): identical on every rank
dropout   yes      the global torch generator after initialization: dropout, anything else
data      no       the order of the training examples: every rank walks one permutation
augment   yes      random crops and flips
slices    no       PER's slices theta: the same directions on every rank
locations yes      PER's random spatial locations per image (``locations=m``)
recorder  yes      the ActivationRecorder's reservoir keys
========= ======== ===========================================================================
"""

from __future__ import annotations

import hashlib

from per_core.checks import check_seed, is_integer

__all__ = ["PER_RANK", "STREAMS", "stream_seed"]

#: The trainer's random streams, and those that differ between data-parallel ranks.
STREAMS = ("init", "dropout", "data", "augment", "slices", "locations", "recorder")
PER_RANK = frozenset({"dropout", "augment", "locations", "recorder"})


def stream_seed(seed: int, stream: str, rank: int = 0) -> int:
    """The seed of one random stream of a run: ``blake2b_64("per_core/{stream}/{rank}/{seed}")``.

    Parameters
    ----------
    seed : int
        The run's seed, in [0, 2**64).
    stream : str
        One of :data:`STREAMS`.
    rank : int
        The data-parallel rank; must be 0 for a stream every rank shares (not in :data:`PER_RANK`).

    Returns
    -------
    int
        A seed in [0, 2**64) for ``torch.Generator.manual_seed``: the first 8 bytes of the BLAKE2b
        digest, little-endian. Stable across machines, Python and library versions.

    Example
    -------
    >>> stream_seed(0, "data") != stream_seed(0, "slices") != stream_seed(1, "data")
    True
    """
    seed = check_seed(seed)
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; the streams are {', '.join(STREAMS)}")
    if not is_integer(rank) or rank < 0:
        raise ValueError(f"rank must be a non-negative integer, got {rank!r}")
    if rank and stream not in PER_RANK:
        raise ValueError(f"stream {stream!r} is shared by all ranks: ask for it with rank 0, not {rank}")
    digest = hashlib.blake2b(f"per_core/{stream}/{int(rank)}/{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
