r"""The four 2-D distributions of the paper's Figure 1, and what BN and DBN do to a sample.

All four have mean 0 and unit variance per coordinate; (c) and (d) also have identity
covariance. So batch normalization (per-coordinate standardization) treats all four the same,
decorrelated BN (whitening) treats (a), (c) and (d) the same, and only a distance between
distributions tells all four apart.

The samples are standardized exactly (empirical mean 0 and variance 1 per coordinate, and for
(a), (c), (d) empirical covariance exactly I), so that "BN changes nothing" holds for the sample
itself, not only in expectation.

References
----------
.. [1] Joo, T., Kang, D., Kim, B. "Regularizing activations in neural networks via distribution
   matching with the Wasserstein metric", ICLR 2020, Figure 1.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FIGURE1_NAMES", "batch_norm", "figure1_distributions", "whiten"]

#: Panel key -> title, in the paper's order.
FIGURE1_NAMES = {"a": "(a) Gaussian", "b": "(b) correlated", "c": "(c) skewed", "d": "(d) multimodal"}


def batch_norm(X: np.ndarray, eps: float = 0.0) -> np.ndarray:
    r"""Per-coordinate standardization with the sample's statistics (BN without affine).

    .. math::
        \hat x_{ij} = (x_{ij} - \bar x_j) / \sqrt{s_j^2 + \epsilon}

    X : ndarray, shape (n, d). Returns an array of the same shape. A constant column has no
    standardization unless ``eps > 0`` (a ValueError otherwise).
    """
    X = _sample_matrix(X, eps)
    constant = np.ptp(X, 0) == 0
    if eps == 0 and constant.any():
        cols = np.flatnonzero(constant).tolist()
        raise ValueError(f"column(s) {cols} of X are constant: dividing by their std 0 is undefined; pass eps > 0")
    return (X - X.mean(0)) / np.sqrt(X.var(0) + eps)


def whiten(X: np.ndarray, eps: float = 0.0) -> np.ndarray:
    r"""ZCA whitening with the sample covariance (decorrelated BN without affine, Huang et al. 2018).

    .. math::
        \hat X = (X - \bar x)\, \Sigma^{-1/2}, \qquad \Sigma = \mathrm{cov}(X) + \epsilon I

    X : ndarray, shape (n, d). Returns an array of the same shape with identity sample covariance.
    A singular covariance (n <= d, a constant column, collinear columns) has no inverse square
    root unless ``eps > 0`` (a ValueError otherwise).
    """
    X = _sample_matrix(X, eps)
    Xc = X - X.mean(0)
    cov = Xc.T @ Xc / len(X) + eps * np.eye(X.shape[1])
    vals, vecs = np.linalg.eigh(cov)
    tol = X.shape[1] * np.finfo(np.float64).eps  # relative to the largest eigenvalue
    if vals[0] <= tol * max(vals[-1], np.finfo(np.float64).tiny):
        rank = int(np.sum(vals > tol * vals[-1]))
        raise ValueError(
            f"the covariance of X ({X.shape[0]} rows, {X.shape[1]} columns) is singular (rank {rank}): "
            "it cannot be whitened; pass eps > 0"
        )
    return Xc @ (vecs / np.sqrt(vals)) @ vecs.T


def _sample_matrix(X: np.ndarray, eps: float) -> np.ndarray:
    """``X`` as a finite float64 (n, d) array with n >= 1, checked with ``eps >= 0``."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"X must have shape (n, d) with n, d >= 1, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X must be finite, got NaN or inf values")
    if not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    return X


def figure1_distributions(n: int = 2000, seed: int = 0, rho: float = 0.8) -> dict[str, np.ndarray]:
    r"""Samples of the four distributions of Figure 1, each of shape (n, 2).

    - (a) :math:`\mathcal{N}(0, I)`;
    - (b) Gaussian with correlation ``rho`` (covariance [[1, rho], [rho, 1]]);
    - (c) independent standardized exponentials (skewness 2 per coordinate), covariance I;
    - (d) four Gaussians at :math:`(\pm 0.9, \pm 0.9)` with standard deviation
      :math:`\sqrt{1 - 0.81}`, covariance I.

    Example
    -------
    >>> S = figure1_distributions(500)
    >>> [bool(np.allclose(np.cov(S[k].T, bias=True), np.eye(2))) for k in "abcd"]
    [True, False, True, True]
    """
    if n < 3:
        raise ValueError(f"n must be at least 3 to standardize a sample, got {n}")
    if not -1 < rho < 1:
        raise ValueError(f"rho must be in (-1, 1), got {rho}")
    rng = np.random.default_rng(seed)
    gauss = rng.standard_normal((n, 2))
    corr = gauss @ np.linalg.cholesky(np.array([[1.0, rho], [rho, 1.0]])).T
    skew = rng.exponential(size=(n, 2)) - 1.0
    centers = np.array([[0.9, 0.9], [0.9, -0.9], [-0.9, 0.9], [-0.9, -0.9]])
    multi = centers[rng.integers(0, 4, n)] + np.sqrt(1 - 0.81) * rng.standard_normal((n, 2))
    return {"a": whiten(gauss), "b": batch_norm(corr), "c": whiten(skew), "d": whiten(multi)}
