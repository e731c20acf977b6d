"""Counter-based randomness for the soft step: every draw is a pure function of
(request seed, soft step, purpose, index), computed for a whole batch in tensor ops.

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
    counter = (pair index, soft step, purpose, 0)             one per 2 draws
    philox4x32_10(counter, key) -> 4 words -> 2 uniforms of 53 bits each, in (0, 1)

Every draw a step needs is made in one Philox evaluation (``draw``): on CPU its cost is
the ~200 tensor operations of ten rounds, whatever the batch.

Shape suffixes: B rows, N draws per row, K slots.
"""

import hashlib

import torch

MASK32 = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_PHILOX_ROUNDS = 10

# Purposes: each kind of draw has its own counter lane, so adding draws of one kind never
# shifts the numbers of another.
GUMBEL = 0
EMIT = 1
DIRICHLET_BOOST = 2
DIRICHLET_PROPOSALS = 3
MULTIPLEX = 4
"""Multiplex draws with replacement: one uniform per draw."""
MULTIPLEX_KEYS = 5
"""Multiplex draws without replacement: one Gumbel key per slot."""
GAUSSIAN = 6
"""Gaussian noise on the concept embedding: one uniform per hidden dimension (Box-Muller pairs)."""
GAMMA_ATTEMPTS = 8
"""Marsaglia-Tsang attempts per gamma draw; each accepts with probability >= 0.95 (shape >= 1),
so all eight fail with probability < 4e-11 (then the last proposal is used)."""
GAMMA_DRAWS_PER_SLOT = 3 * GAMMA_ATTEMPTS
"""Uniforms per slot in the DIRICHLET_PROPOSALS lane: (normal u1, normal u2, accept u) per attempt."""


def philox4x32_10(counter: tuple[torch.Tensor, ...], key: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Philox4x32 with 10 rounds on int64 tensors holding 32-bit words (broadcasting).

    The two multiplications of a round run as one (the words and multipliers stacked).
    """
    c0, c1, c2, c3 = torch.broadcast_tensors(*counter, key[0], key[1])[:4]
    device = c0.device
    shape = (2,) + (1,) * c0.dim()
    multiplier = torch.tensor(_PHILOX_M, dtype=torch.int64, device=device).view(shape)
    m_hi, m_lo = multiplier >> 16, multiplier & 0xFFFF
    bump = torch.tensor(_PHILOX_W, dtype=torch.int64, device=device).view(shape)
    keys = torch.stack(torch.broadcast_tensors(key[0], key[1])).expand(2, *c0.shape)
    even, odd = torch.stack((c0, c2)), torch.stack((c1, c3))  # multiplied / xored words
    for round_index in range(_PHILOX_ROUNDS):
        if round_index:
            keys = (keys + bump) & MASK32
        a_hi, a_lo = even >> 16, even & 0xFFFF
        lo_lo = a_lo * m_lo
        cross = a_hi * m_lo + a_lo * m_hi + (lo_lo >> 16)  # < 2**34
        low = ((cross & 0xFFFF) << 16) | (lo_lo & 0xFFFF)
        high = (a_hi * m_hi + (cross >> 16)) & MASK32
        # (c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
        even, odd = high.flip(0) ^ odd ^ keys, low.flip(0)
    return even[0], odd[0], even[1], odd[1]


def draw(seed_B: torch.Tensor, step_B: torch.Tensor, lanes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Uniforms in the open interval (0, 1), float64, for each (purpose, count) lane: a
    (B, count) tensor each, from one Philox evaluation. Draw n of a lane depends only on
    (seed_B[b], step_B[b], purpose, n): not on the other lanes, nor on the counts."""
    device = seed_B.device
    pairs, purposes = [], []
    for purpose, count in lanes:
        size = (count + 1) // 2
        pairs.append(torch.arange(size, device=device, dtype=torch.int64))
        purposes.append(torch.full((size,), purpose, device=device, dtype=torch.int64))
    pair_N, purpose_N = torch.cat(pairs).unsqueeze(0), torch.cat(purposes).unsqueeze(0)
    seed = seed_B.to(torch.int64).unsqueeze(-1)
    key = (seed & MASK32, (seed >> 32) & MASK32)
    step = step_B.to(torch.int64).unsqueeze(-1) & MASK32
    w0, w1, w2, w3 = philox4x32_10((pair_N, step, purpose_N, torch.zeros_like(pair_N)), key)
    # 53 random bits per uniform (27 + 26), offset by half a unit: never exactly 0 or 1.
    first = ((w0 >> 5) * 67108864 + (w1 >> 6)).double()
    second = ((w2 >> 5) * 67108864 + (w3 >> 6)).double()
    values = (torch.stack((first, second), dim=-1).reshape(seed_B.shape[0], -1) + 0.5) * (1.0 / 9007199254740992.0)
    out, start = [], 0
    for _, count in lanes:
        size = 2 * ((count + 1) // 2)
        out.append(values[:, start : start + count])
        start += size
    return out


def uniforms(seed_B: torch.Tensor, step_B: torch.Tensor, purpose: int, count: int) -> torch.Tensor:
    """(B, count) uniforms of one lane (see ``draw``)."""
    return draw(seed_B, step_B, [(purpose, count)])[0]


def gumbel(uniform_BN: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel draws from uniforms in (0, 1)."""
    return -torch.log(-torch.log(uniform_BN))


def normal(uniform_BN: torch.Tensor) -> torch.Tensor:
    """Standard normal draws (Box-Muller, both outputs of each pair) from an even number of
    uniforms in (0, 1), float64."""
    u1, u2 = uniform_BN[:, 0::2], uniform_BN[:, 1::2]
    radius, angle = torch.sqrt(-2.0 * torch.log(u1)), 2.0 * torch.pi * u2
    return torch.stack((radius * torch.cos(angle), radius * torch.sin(angle)), dim=-1).reshape(uniform_BN.shape)


def gaussian_lane(hidden_size: int) -> tuple[int, int]:
    """The ``draw`` lane of ``hidden_size`` normals (an even number of uniforms)."""
    return GAUSSIAN, hidden_size + hidden_size % 2


def normals(seed_B: torch.Tensor, step_B: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """(B, hidden_size) standard normals of the GAUSSIAN lane, as the soft step makes them."""
    return normal(draw(seed_B, step_B, [gaussian_lane(hidden_size)])[0])[:, :hidden_size]


def gamma_lanes(count: int) -> list[tuple[int, int]]:
    """The ``draw`` lanes ``log_gammas`` needs for ``count`` slots: proposals, then boosts."""
    return [(DIRICHLET_PROPOSALS, GAMMA_DRAWS_PER_SLOT * count), (DIRICHLET_BOOST, count)]


def log_gammas(concentration_BK: torch.Tensor, proposals_BN: torch.Tensor, boost_BK: torch.Tensor) -> torch.Tensor:
    """log of Gamma(concentration, 1) draws, float64, for concentrations > 0 (any size),
    from the uniforms of ``gamma_lanes`` (slot-major: slot k's draws do not depend on K).

    Marsaglia and Tsang (2000) for shape a + 1 >= 1, then the boost
    Gamma(a) = Gamma(a + 1) * U**(1/a), taken in log space so tiny shapes do not underflow.
    All attempts are evaluated at once; each slot takes its first accepted proposal.
    """
    shape_BK = concentration_BK.double()
    rows, slots = shape_BK.shape
    u = proposals_BN.reshape(rows, slots, GAMMA_ATTEMPTS, 3)
    d = (shape_BK + 1.0 - 1.0 / 3.0).unsqueeze(-1)
    c = 1.0 / torch.sqrt(9.0 * d)
    normal = torch.sqrt(-2.0 * torch.log(u[..., 0])) * torch.cos(2.0 * torch.pi * u[..., 1])  # Box-Muller
    v = (1.0 + c * normal) ** 3
    positive = v > 0
    log_v = torch.log(torch.where(positive, v, 1.0))
    accepted = positive & (torch.log(u[..., 2]) < 0.5 * normal * normal + d - d * v + d * log_v)
    accepted[..., -1] = True  # never reached in practice (< 4e-11): the last proposal stands
    first = accepted.to(torch.int8).argmax(-1, keepdim=True)
    log_gamma_plus_one = (torch.log(d) + log_v).gather(-1, first).squeeze(-1)
    return log_gamma_plus_one + torch.log(boost_BK) / shape_BK


def gumbels(seed_B: torch.Tensor, step_B: torch.Tensor, count: int) -> torch.Tensor:
    """(B, count) Gumbel draws of the GUMBEL lane, as the soft step makes them."""
    return gumbel(uniforms(seed_B, step_B, GUMBEL, count))


def gamma_draws(concentration_BK: torch.Tensor, seed_B: torch.Tensor, step_B: torch.Tensor) -> torch.Tensor:
    """``log_gammas`` with the draws of (seed, step), as the soft step makes them."""
    proposals, boost = draw(seed_B, step_B, gamma_lanes(concentration_BK.shape[-1]))
    return log_gammas(concentration_BK, proposals, boost)


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
