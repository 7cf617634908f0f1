"""Sample files in the layout of the ADM evaluation suite (github.com/openai/guided-diffusion, `evaluations/`).

An .npz with `arr_0`: uint8 images [N, H, W, 3] (channels last, 0..255), and, for class-conditional samples,
`arr_1`: int64 class labels [N] (as ADM's `image_sample.py` writes them). ADM's ImageNet reference batches use the
same `arr_0` and add the Inception statistics `mu` [2048] and `sigma` [2048, 2048].

Both sides stream, so a 50,000-image file at 256x256 (9.8 GB) never has to fit in memory: `write_samples` takes
the images in parts, `image_batches` reads them back in batches. Members are stored uncompressed, as np.savez
does, and with a fixed date, so that the same samples always give the same bytes (comparable by checksum).
"""

import zipfile

import numpy as np
import torch

from dimr.atomic import replaced_atomically

FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest a zip entry can carry


def write_samples(path, shape, parts):
    """Write an ADM-layout sample file (whole or not at all) from parts (uint8 images [n, H, W, 3], labels [n])
    that add up to `shape` (N, H, W, 3)."""
    with replaced_atomically(path) as tmp:
        _write_samples(tmp, shape, parts)


def _write_samples(path, shape, parts):
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": tuple(shape)}
    labels, written = [], 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open(_entry("arr_0.npy"), "w", force_zip64=True) as member:
            np.lib.format.write_array_header_2_0(member, header)
            for images, part_labels in parts:
                if images.dtype != np.uint8 or images.shape[1:] != tuple(shape[1:]):
                    raise ValueError(f"a part of {path} has dtype {images.dtype} and shape {images.shape}; "
                                     f"expected uint8 [n, {', '.join(map(str, shape[1:]))}]")
                member.write(np.ascontiguousarray(images).tobytes())
                labels.append(np.asarray(part_labels, dtype=np.int64))
                written += len(images)
        if written != shape[0]:
            raise ValueError(f"{path}: the parts hold {written} images, expected {shape[0]}")
        with archive.open(_entry("arr_1.npy"), "w", force_zip64=True) as member:
            np.lib.format.write_array(member, np.concatenate(labels))


def _entry(name):
    return zipfile.ZipInfo(name, date_time=FIXED_DATE)


def _open_images(archive, path):
    """The `arr_0` member of an open archive, positioned after its header, and its shape."""
    if "arr_0.npy" not in archive.namelist():
        raise ValueError(f"{path} has no arr_0 (images); members: {', '.join(archive.namelist())}")
    member = archive.open("arr_0.npy")
    version = np.lib.format.read_magic(member)
    read_header = np.lib.format.read_array_header_1_0 if version[0] == 1 else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(member)
    if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or fortran_order:
        member.close()
        raise ValueError(f"{path}: arr_0 must be uint8 images [N, H, W, 3] (the ADM layout), "
                         f"got {dtype} {list(shape)}")
    return member, shape


def sample_count(path):
    """How many images a sample file holds, read from its header."""
    with zipfile.ZipFile(path) as archive:
        member, shape = _open_images(archive, path)
        member.close()
    return shape[0]


def image_batches(path, batch_size):
    """The images of a sample file in order, as uint8 tensors [b, 3, H, W] (channels first) of at most batch_size."""
    with zipfile.ZipFile(path) as archive:
        member, (count, height, width, _) = _open_images(archive, path)
        with member:
            for start in range(0, count, batch_size):
                n = min(batch_size, count - start)
                data = member.read(n * height * width * 3)
                images = np.frombuffer(data, dtype=np.uint8).reshape(n, height, width, 3)
                # A contiguous copy: a network given a channels-last view picks other kernels, other last bits.
                yield torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def read_samples(path):
    """All images of a sample file, uint8 [N, 3, H, W], and their labels [N] (ValueError if it has none)."""
    with np.load(path) as data:
        if "arr_1" not in data.files:
            raise ValueError(f"{path} has no class labels (arr_1); the shapes measure needs the class of every sample")
        labels = torch.from_numpy(data["arr_1"].astype(np.int64))
    images = torch.cat(list(image_batches(path, 4096)))
    if len(labels) != len(images):
        raise ValueError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels
