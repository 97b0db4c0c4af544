"""Writing small CT files with pydicom's own writer, for the intensity and DICOM tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def ct_dataset(hu: np.ndarray | None, intercept: float = -1024.0, slope: float = 1.0,
               photometric: str = "MONOCHROME2") -> Dataset:
    """A CT slice whose stored pixels are ``(hu - intercept) / slope`` (int16); without
    ``hu`` a slice header with no pixel data (8x8)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    rows, columns = hu.shape if hu is not None else (8, 8)
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1  # signed
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleSlope = f"{slope:g}"
    if hu is not None:
        ds.PixelData = np.rint((hu - intercept) / slope).astype("<i2").tobytes()
    return ds


def write_ct(path: Path, hu: np.ndarray | None, intercept: float = -1024.0,
             slope: float = 1.0, photometric: str = "MONOCHROME2") -> Path:
    """:func:`ct_dataset` saved as a DICOM file (128-byte preamble, ``DICM``, file meta)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ct_dataset(hu, intercept, slope, photometric).save_as(path, enforce_file_format=True)
    return path


def disk_phantom(hu_inside: float, seed: int, size: int = 40, noise: float = 12.0
                 ) -> np.ndarray:
    """Air (-1000 HU) around a disk of ``hu_inside`` HU, with seeded noise: two classes that
    differ only by the disk's density."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    centre = size / 2 + rng.uniform(-3, 3, 2)
    inside = (y - centre[0]) ** 2 + (x - centre[1]) ** 2 < (size * 0.3) ** 2
    return np.where(inside, hu_inside, -1000.0) + rng.normal(0.0, noise, (size, size))
