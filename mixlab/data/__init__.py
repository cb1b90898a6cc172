"""Data sets as whole tensors on the training device, and mini-batch iteration over them.

Every data set used here is small enough to live on the accelerator in full (Fashion-MNIST
is 188 MB as float32), so there is no ``DataLoader``: batches are index gathers on the device
and augmentation is a handful of batched tensor ops. That keeps a training step free of
host-to-device copies and Python loops over images.

Raw loaders are registered in :data:`DATASETS` under the config name (``data.name``), one module per
modality (``images``, ``tabular``, ``text``); each is a function ``(*, root, download) -> (x_train, y_train,
x_test, y_test, num_classes, task)`` returning raw (un-normalised) CPU tensors, and
:func:`load_dataset` (``base``) does the common part (validation split, subset, normalisation,
device placement).
"""
from . import coco, images, scenes, tabular, text  # noqa: F401 - registers their loaders
from .base import (DATASETS, DEFAULT_ROOT, Batches, DataFileError, DataNotFoundError, Dataset, RawData,
                   balanced_subset, crop_and_flip, dataset_from_config, eval_batches, load_dataset,
                   stratified_split)
from .images import find_fashion_mnist, read_idx

__all__ = ["DATASETS", "DEFAULT_ROOT", "Batches", "DataFileError", "DataNotFoundError", "Dataset", "RawData",
           "balanced_subset", "crop_and_flip", "dataset_from_config", "eval_batches", "find_fashion_mnist",
           "load_dataset", "read_idx", "stratified_split"]
