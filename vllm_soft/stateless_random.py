"""Counter-based randomness for the soft step: every draw is a pure function of
(request seed, soft step, purpose, slot), computed for a whole batch in tensor ops.

Why not ``torch.Generator``: a generator is state. Its draws depend on how often it was
called before (so on chunking, preemption and discarded samples), one generator per
request cannot be batched, and generators on different tensor-parallel ranks agree only
if every rank calls them identically. A counter-based generator has no state: the same
(seed, step) gives the same numbers alone or in a batch of 256, on CPU or CUDA, on every
rank, and a rollout can be replayed from its seed without snapshots.

The generator is Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
3", SC 2011; the generator behind cuRAND and torch's CUDA RNG), written with int64 tensor
ops. Products of two 32-bit words are formed from 16-bit limbs so that no intermediate
exceeds 2**50: int64 never overflows, and the result is bit-identical on every device.

    key     = (seed mod 2**32, seed >> 32 mod 2**32)          one per row
    counter = (slot pair, soft step, purpose, 0)              one per 2 draws
    philox4x32_10(counter, key) -> 4 words -> 2 uniforms of 53 bits each, in (0, 1)

Shape suffixes: B rows, N draws per row.
"""

import hashlib

import torch

MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_PHILOX_ROUNDS = 10

# Purposes: each kind of draw has its own counter lane, so adding draws of one kind never
# shifts the numbers of another.
GUMBEL = 0
EMIT = 1
DIRICHLET_BOOST = 2
DIRICHLET_NORMAL = 3  # 3, 4, ...: one lane per rejection-sampling attempt (two normals' uniforms each)
GAMMA_ATTEMPTS = 8
"""Marsaglia-Tsang attempts per gamma draw; each accepts with probability >= 0.95 (shape >= 1),
so all eight fail with probability < 4e-11 (then the last proposal is used)."""


def _mulhilo32(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of a * b for 32-bit a (int64 tensor) and 32-bit constant b."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    b_hi, b_lo = b >> 16, b & 0xFFFF
    lo_lo = a_lo * b_lo
    cross = a_hi * b_lo + a_lo * b_hi + (lo_lo >> 16)  # < 2**34
    low = ((cross & 0xFFFF) << 16) | (lo_lo & 0xFFFF)
    high = a_hi * b_hi + (cross >> 16)
    return high & MASK32, low


def philox4x32_10(counter: tuple[torch.Tensor, ...], key: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Philox4x32 with 10 rounds on int64 tensors holding 32-bit words (broadcasting)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_index in range(_PHILOX_ROUNDS):
        if round_index:
            k0 = (k0 + _PHILOX_W0) & MASK32
            k1 = (k1 + _PHILOX_W1) & MASK32
        hi0, lo0 = _mulhilo32(c0, _PHILOX_M0)
        hi1, lo1 = _mulhilo32(c2, _PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def uniforms(seed_B: torch.Tensor, step_B: torch.Tensor, purpose: int, count: int) -> torch.Tensor:
    """(B, count) float64 uniforms in the open interval (0, 1): draw n of row b depends only
    on (seed_B[b], step_B[b], purpose, n)."""
    device = seed_B.device
    seed = seed_B.to(torch.int64).unsqueeze(-1)
    key = (seed & MASK32, (seed >> 32) & MASK32)
    pairs = torch.arange((count + 1) // 2, device=device, dtype=torch.int64).unsqueeze(0)
    pairs, step = torch.broadcast_tensors(pairs, step_B.to(torch.int64).unsqueeze(-1) & MASK32)
    zero = torch.zeros_like(pairs)
    w0, w1, w2, w3 = philox4x32_10((pairs, step, zero + purpose, zero), key)
    # 53 random bits per uniform (27 + 26), offset by half a unit: never exactly 0 or 1.
    first = ((w0 >> 5) * 67108864 + (w1 >> 6)).double()
    second = ((w2 >> 5) * 67108864 + (w3 >> 6)).double()
    bits = torch.stack((first, second), dim=-1).reshape(seed_B.shape[0], -1)[:, :count]
    return (bits + 0.5) * (1.0 / 9007199254740992.0)


def gumbels(seed_B: torch.Tensor, step_B: torch.Tensor, count: int) -> torch.Tensor:
    """(B, count) standard Gumbel draws, float64."""
    return -torch.log(-torch.log(uniforms(seed_B, step_B, GUMBEL, count)))


def log_gammas(concentration_BK: torch.Tensor, seed_B: torch.Tensor, step_B: torch.Tensor) -> torch.Tensor:
    """log of Gamma(concentration, 1) draws, float64, for concentrations > 0 (any size).

    Marsaglia and Tsang (2000) for shape a + 1 >= 1, then the boost
    Gamma(a) = Gamma(a + 1) * U**(1/a), taken in log space so tiny shapes do not underflow.
    Attempts run in parallel; each slot takes its first accepted proposal.
    """
    shape_BK = concentration_BK.double()
    count = shape_BK.shape[-1]
    d = shape_BK + 1.0 - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    chosen = torch.zeros_like(shape_BK)
    accepted = torch.zeros_like(shape_BK, dtype=torch.bool)
    for attempt in range(GAMMA_ATTEMPTS):
        # Slot-major (draws 3k, 3k+1, 3k+2 belong to slot k): a slot's draws do not depend
        # on how many slots the batch has.
        draws = uniforms(seed_B, step_B, DIRICHLET_NORMAL + attempt, 3 * count).reshape(-1, count, 3)
        u1, u2, u_accept = draws.unbind(-1)
        normal = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * u2)  # Box-Muller
        v = (1.0 + c * normal) ** 3
        positive = v > 0
        log_v = torch.log(torch.where(positive, v, 1.0))
        ok = positive & (torch.log(u_accept) < 0.5 * normal * normal + d - d * v + d * log_v)
        take = ok & ~accepted
        last = attempt == GAMMA_ATTEMPTS - 1
        proposal = torch.log(d) + log_v if not last else torch.log(d) + torch.where(positive, log_v, 0.0)
        chosen = torch.where(take | (last & ~accepted), proposal, chosen)
        accepted |= ok
    boost = torch.log(uniforms(seed_B, step_B, DIRICHLET_BOOST, count)) / shape_BK
    return chosen + boost


def request_seed(seed: int | None, engine_seed: int | None, request_id: str) -> int:
    """The 64-bit seed of a request's soft steps: its own seed when it has one, else one
    derived from the engine seed and the request id (the same in every worker process)."""
    if seed is not None:
        return seed & 0xFFFFFFFFFFFFFFFF
    digest = hashlib.blake2b(f"{engine_seed or 0}/{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def as_int64(seed: int) -> int:
    """A 64-bit unsigned seed as the int64 with the same bits (tensors hold int64)."""
    return seed - (1 << 64) if seed >= (1 << 63) else seed
