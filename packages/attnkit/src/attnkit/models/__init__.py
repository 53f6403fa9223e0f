"""Tiny native models, small data sets and a seeded training loop.

>>> from attnkit.models import TinyViT, digits, train, evaluate
>>> (train_set, test_set) = digits()
>>> model = TinyViT(attention=["dense", "dense", "neighborhood", "neighborhood"],
...                 attention_params=[{}, {}, {"kernel_size": 5}, {"kernel_size": 5}])
>>> result = train(model, train_set, steps=150, eval_data=test_set)  # doctest: +SKIP

``digits`` needs scikit-learn (``pip install attnkit[models]``).
"""

from __future__ import annotations

from attnkit.models.data import IGNORE_INDEX, copy_task, digits
from attnkit.models.pretrained import PRETRAINED, load
from attnkit.models.tiny import Block, TinyGPT, TinyModel, TinyViT, layer_specs
from attnkit.models.train import TrainResult, evaluate, train

__all__ = [
    "IGNORE_INDEX",
    "PRETRAINED",
    "Block",
    "TinyGPT",
    "TinyModel",
    "TinyViT",
    "TrainResult",
    "copy_task",
    "digits",
    "evaluate",
    "layer_specs",
    "load",
    "train",
]
