"""Newton-Schulz orthogonalization (docs/method.md §2.2).

Maps a matrix ``V = U S Vᵀ`` to approximately ``U Vᵀ`` with five quintic iterations
``X <- a X + (b A + c A A) X``, ``A = X Xᵀ``, run on the wide orientation. Leading dimensions are
a batch: an expert bank or a stack of same-shaped layers is orthogonalized as one batched
computation.

Coefficient tables: the paper's (the default, docs/method.md §2.2), Polar Express's (Amsel et al.,
arXiv 2505.16932: the minimax-optimal composition for singular values in [1e-3, 1], with the
paper's 1.01 safety factor), and the original Muon's fixed triple. ``benchmarks/newton_schulz.py``
measures their orthogonality error and time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "HYPERP_COEFFICIENTS",
    "KELLER_JORDAN_COEFFICIENTS",
    "POLAR_EXPRESS_COEFFICIENTS",
    "default_ns_dtype",
    "dtype_name",
    "newton_schulz",
    "resolve_coefficients",
]

# Per-step coefficients: they map singular values in [1e-2, 1] into about [0.98, 1.03].
HYPERP_COEFFICIENTS: tuple[tuple[float, float, float], ...] = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
# The fixed coefficients of the original Muon (and torch.optim.Muon).
KELLER_JORDAN_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)


def _with_safety(rows, factor: float = 1.01):
    """Polar Express's safety factor: ``p(x / 1.01)`` for every step but the last (a, b, c of a
    quintic odd polynomial scale as ``1.01^-1, ^-3, ^-5``), so rounding cannot push a singular
    value past the interval the polynomials were fitted on."""
    scaled = [(a / factor, b / factor**3, c / factor**5) for a, b, c in rows[:-1]]
    return (*scaled, rows[-1])


# Per-step optimal quintics for singular values in [1e-3, 1] (arXiv 2505.16932, degree 5); the
# last row is the fixed point every further step repeats.
POLAR_EXPRESS_COEFFICIENTS: tuple[tuple[float, float, float], ...] = _with_safety(
    (
        (8.28721201814563, -23.595886519098837, 17.300387312530933),
        (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
        (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
        (3.3184196573706015, -2.488488024314874, 0.51004894012372),
        (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
        (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
        (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
        (1.875, -1.25, 0.375),
    )
)
_TABLES = {"hyperp": HYPERP_COEFFICIENTS, "polar_express": POLAR_EXPRESS_COEFFICIENTS}

NORMALIZATION_EPS = 1e-7

Coefficients = str | tuple[float, float, float] | Sequence[tuple[float, float, float]]


def default_ns_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (tensor cores); on a CPU, whichever of bf16 and fp32 that CPU runs faster
    (measured once per machine, see :mod:`hyperp.optim.precision`); fp32 elsewhere."""
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu":
        from hyperp.optim.precision import cpu_ns_dtype

        return cpu_ns_dtype()
    return torch.float32


_DTYPE_NAMES = {
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp32": "fp32",
    "float32": "fp32",
    "fp16": "fp16",
    "float16": "fp16",
}


def dtype_name(value: torch.dtype | str | None) -> str | None:
    """``"bf16"``, ``"fp32"``, ``"fp16"`` or None (automatic) for a dtype or one of its names."""
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        value = str(value).removeprefix("torch.")
    if value not in _DTYPE_NAMES:
        raise ValueError(f"unknown ns_dtype {value!r}; use one of {sorted(_DTYPE_NAMES)}")
    return _DTYPE_NAMES[value]


def resolve_coefficients(
    coefficients: Coefficients, steps: int
) -> list[tuple[float, float, float]]:
    """One ``(a, b, c)`` per step.

    ``"hyperp"`` and ``"polar_express"`` use their per-step tables (steps beyond the table
    repeat its last row, a contraction around 1); ``"keller_jordan"`` (alias ``"muon"``) the
    fixed triple; a triple is used for every step; a sequence of triples must have one row per
    step.
    """
    if steps < 1:
        raise ValueError(f"Newton-Schulz needs at least one step, got steps={steps}")
    if isinstance(coefficients, str):
        if coefficients in _TABLES:
            table = list(_TABLES[coefficients])
            return table[:steps] + [table[-1]] * max(0, steps - len(table))
        if coefficients in ("keller_jordan", "muon"):
            return [KELLER_JORDAN_COEFFICIENTS] * steps
        raise ValueError(
            f"unknown Newton-Schulz coefficients {coefficients!r}; use 'hyperp', "
            "'polar_express', 'keller_jordan' or an explicit (a, b, c) triple"
        )
    rows = list(coefficients)
    if len(rows) == 3 and all(isinstance(v, int | float) for v in rows):
        return [tuple(float(v) for v in rows)] * steps  # type: ignore[list-item]
    if len(rows) != steps or any(len(r) != 3 for r in rows):
        raise ValueError(f"need {steps} (a, b, c) rows of Newton-Schulz coefficients, got {rows}")
    return [tuple(float(v) for v in r) for r in rows]  # type: ignore[misc]


def newton_schulz(
    G: torch.Tensor,
    steps: int = 5,
    *,
    coefficients: Coefficients = "hyperp",
    dtype: torch.dtype | None = None,
    eps: float = NORMALIZATION_EPS,
    symmetric: bool = False,
) -> torch.Tensor:
    """Orthogonalize a matrix, or a batch of matrices (all leading dimensions are batch).

    The input is normalized by its Frobenius norm (per matrix) plus ``eps``, so that every
    singular value starts at most 1; tall matrices are transposed so that the Gram matrix is the
    smaller one. ``dtype`` is the working precision (default: bf16 on CUDA, fp32 otherwise).
    ``symmetric``: form the symmetric products ``X Xᵀ`` and ``A A`` from three of their four
    row/column blocks (3/4 of those FLOPs); what it saves in time depends on the machine
    (``benchmarks/newton_schulz.py``). Returns a tensor of ``G``'s shape and dtype.
    """
    if G.ndim < 2:
        raise ValueError(
            f"newton_schulz needs a matrix or a batch of matrices, got shape {tuple(G.shape)}"
        )
    rows = resolve_coefficients(coefficients, steps)
    work_dtype = dtype or default_ns_dtype(G.device)
    X = G.reshape(-1, G.shape[-2], G.shape[-1]).to(work_dtype)
    tall = X.shape[-2] > X.shape[-1]
    if tall:
        X = X.mT
    norms = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
    X = X / (norms + eps)
    symmetric = symmetric and X.shape[-2] >= 2
    for a, b, c in rows:
        if symmetric:
            A = _symmetric_product(X)
            polynomial = _symmetric_product(A).mul_(c).add_(A, alpha=b)
        else:
            A = X @ X.mT
            polynomial = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b·A + c·A·A
        X = torch.baddbmm(X, polynomial, X, beta=a)  # a·X + (b·A + c·A·A)·X
    if tall:
        X = X.mT
    return X.reshape(G.shape).to(G.dtype)


def _symmetric_product(X: torch.Tensor) -> torch.Tensor:
    """``X Xᵀ`` (for a symmetric ``X`` that is ``X X``) from its two diagonal blocks and one
    off-diagonal block; the other is the transpose."""
    half = X.shape[-2] // 2
    top, bottom = X[..., :half, :], X[..., half:, :]
    out = X.new_empty(*X.shape[:-1], X.shape[-2])
    out[..., :half, :half] = top @ top.mT
    out[..., half:, half:] = bottom @ bottom.mT
    out[..., :half, half:] = top @ bottom.mT
    out[..., half:, :half] = out[..., :half, half:].mT
    return out
