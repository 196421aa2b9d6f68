"""Data: the embedded shapes data set (with object masks) and ImageNet-layout folders."""

from zflight.data.files import IMAGE_SUFFIXES, DataError
from zflight.data.modules import ImageFolderDataModule, ShapesDataModule, check_image_folder
from zflight.data.shapes import CLASSES, ShapesDataset

__all__ = [
    "CLASSES",
    "IMAGE_SUFFIXES",
    "DataError",
    "ImageFolderDataModule",
    "ShapesDataModule",
    "ShapesDataset",
    "check_image_folder",
]
