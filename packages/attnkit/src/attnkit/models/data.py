"""Small data sets for the tiny models, all in memory and deterministic given a seed.

A data set is a pair ``(inputs, targets)`` of tensors with the same first axis, which is what
:func:`attnkit.models.train` and :func:`attnkit.models.evaluate` take. Targets equal to
:data:`IGNORE_INDEX` are not scored (the prompt half of a copy sequence, say).
"""

from __future__ import annotations

import torch

__all__ = ["IGNORE_INDEX", "copy_task", "digits"]

#: Target value that the loss and the accuracy skip (``torch.nn.functional.cross_entropy``'s default).
IGNORE_INDEX = -100

Pair = tuple[torch.Tensor, torch.Tensor]


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")


def digits(seed: int = 0, test_fraction: float = 0.25, dtype: torch.dtype = torch.float32) -> tuple[Pair, Pair]:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes; no download).

    Pixels (0 to 16) are standardised with the *training* split's mean and standard deviation,
    so nothing about the test split leaks into the inputs.

    :param seed: seed of the train/test shuffle.
    :param test_fraction: share of images held out for testing.
    :param dtype: floating dtype of the images.
    :returns: ``((train_images, train_labels), (test_images, test_labels))``; images
        ``(N, 1, 8, 8)`` in ``dtype``, labels ``(N,)`` int64 in ``0..9``.
    :raises ImportError: when scikit-learn is not installed.
    """
    _check_fraction(test_fraction)
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # an optional dependency: say how to get it
        raise ImportError(
            "attnkit.models.digits needs scikit-learn: pip install scikit-learn (or attnkit[models])"
        ) from e
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float64).unsqueeze(1)  # (N, 1, 8, 8)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(test_fraction * len(labels)))
    test_idx, train_idx = order[:n_test], order[n_test:]
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = ((images - mean) / std).to(dtype)
    return (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])


def copy_task(n: int, length: int = 8, vocab_size: int = 16, seed: int = 0) -> Pair:
    """Next-token copy sequences for :class:`~attnkit.models.TinyGPT`.

    Each row is ``a_1 .. a_L SEP a_1 .. a_L`` with ``a_i`` uniform in ``0..vocab_size-1`` and
    ``SEP = vocab_size``; the model reads all but the last token and is scored only where the
    next token is a copied one, so the model's vocabulary is ``vocab_size + 1`` and chance
    accuracy is ``1 / vocab_size``.

    :param n: number of sequences.
    :param length: ``L``, tokens to copy.
    :param vocab_size: number of distinct data tokens.
    :param seed: seed of the generator.
    :returns: ``(inputs, targets)``, both ``(n, 2L)`` int64; targets are
        :data:`IGNORE_INDEX` over the prompt.
    """
    for name, value in (("n", n), ("length", length), ("vocab_size", vocab_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, vocab_size, (n, length), generator=g)
    sep = torch.full((n, 1), vocab_size, dtype=torch.int64)
    seq = torch.cat([data, sep, data], dim=1)  # (n, 2L + 1)
    inputs, targets = seq[:, :-1], seq[:, 1:].clone()
    # Positions up to SEP predict prompt tokens (unpredictable) or SEP itself; score copies only.
    targets[:, :length] = IGNORE_INDEX
    return inputs, targets
