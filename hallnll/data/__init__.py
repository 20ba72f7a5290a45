"""Data: sources (digits, CIFAR-10/100, a user's folder), CIFAR-N labels and
GPU-resident batches with batched augmentation."""
from .sources import ImageData, DataError, load_dataset, load_digits, load_cifar, load_folder, CIFAR10_CLASSES
from .gpu import DeviceImages, augment_apply, augment_batch, augment_draws
from .cifar_n import load_cifar_n, CIFAR_N_KEYS

__all__ = ["ImageData", "DataError", "load_dataset", "load_digits", "load_cifar", "load_folder",
           "CIFAR10_CLASSES", "DeviceImages", "augment_batch", "augment_draws", "augment_apply", "load_cifar_n", "CIFAR_N_KEYS"]
