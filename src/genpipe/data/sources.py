"""Image sources. Array sources (digits, shapes, mnist, cifar) return every image as uint8
``(N, C, H, W)`` plus labels; file sources (imagefolder, parquet) return a listing that prepare
reads and decodes item by item, in parallel and in bounded memory.

Nothing here downloads: sources read data that ships with an installed package, sits at a
path the user gives, or is generated here from the seed (``shapes``).
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import json
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from genpipe.config import DataConfig, StorageConfig
from genpipe.data.files import IMAGE_SUFFIXES, FolderReader, Location, ParquetReader, first_line, locate
from genpipe.errors import InputError


@dataclass(frozen=True)
class SourceImages:
    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64
    class_names: tuple[str, ...]
    description: str
    factors: dict[str, np.ndarray] = field(default_factory=dict)  # (N,) each: what generated image i
    test: np.ndarray | None = None  # (N,) bool: the source's own test split, kept as genpipe's


def resize_uint8(images: np.ndarray, resolution: int) -> np.ndarray:
    """Resize ``(N, C, H, W)`` uint8 images to ``resolution`` squared, bicubic per channel."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images.copy()
    n, c = images.shape[:2]
    out = np.empty((n, c, resolution, resolution), dtype=np.uint8)
    for i in range(n):
        for ch in range(c):
            img = Image.fromarray(images[i, ch], mode="L")
            out[i, ch] = np.asarray(img.resize((resolution, resolution), Image.Resampling.BICUBIC))
    return out


def load_digits_source(dc: DataConfig, seed: int = 0, storage: StorageConfig | None = None) -> SourceImages:
    """scikit-learn's bundled UCI handwritten digits: 1797 images, 8x8, 17 grey levels."""
    from sklearn.datasets import load_digits  # deferred: scikit-learn takes a second to import

    bunch = load_digits()
    raw = bunch.images.astype(np.float64)  # (1797, 8, 8) in [0, 16]
    images = np.rint(raw * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    return SourceImages(
        images=resize_uint8(images, dc.resolution),
        labels=bunch.target.astype(np.int64),
        class_names=tuple(str(n) for n in bunch.target_names),
        description="UCI ML hand-written digits (scikit-learn load_digits), 8x8, 17 grey levels",
    )


SHAPES = ("square", "circle", "triangle")
COLOURS = {  # name -> RGB: six well-separated hues on the black background
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240),
    "yellow": (235, 215, 40), "magenta": (220, 50, 220), "cyan": (40, 210, 220),
}
SUPERSAMPLE = 4  # drawn at 4x the side and box-filtered down: anti-aliased edges


def shape_area(shape: str, scale: float) -> float:
    """The area of one shape as a fraction of the image, ``scale`` being its bounding box's side
    as a fraction of the image's (the triangle is equilateral, its base the box's width)."""
    return {"square": 1.0, "circle": np.pi / 4, "triangle": np.sqrt(3) / 4}[shape] * scale**2


def load_shapes_source(dc: DataConfig, seed: int = 0, storage: StorageConfig | None = None) -> SourceImages:
    """Procedural colour images: one shape per image on black, its factors drawn independently
    and uniformly from the seed: shape (the label), colour, scale (the bounding box's side, a
    fraction of the image's) and position (the box's centre, where the box fits)."""
    sc, side = dc.shapes, dc.resolution
    n = sc.num_images
    rng = np.random.default_rng([seed, 0x5AA9E5])
    shape = rng.integers(0, len(SHAPES), n)
    colour = rng.integers(0, len(COLOURS), n)
    scale = rng.uniform(sc.min_scale, sc.max_scale, n)
    x = rng.uniform(scale / 2, 1 - scale / 2)
    y = rng.uniform(scale / 2, 1 - scale / 2)
    big = side * SUPERSAMPLE
    rgb = list(COLOURS.values())
    images = np.empty((n, 3, side, side), dtype=np.uint8)
    for i in range(n):
        canvas = Image.new("RGB", (big, big))
        draw = ImageDraw.Draw(canvas)
        half = scale[i] * big / 2
        cx, cy = x[i] * big, y[i] * big
        fill = rgb[colour[i]]
        # Pillow fills the end coordinates' pixels too: the far edges one pixel in, so that a box
        # of side s covers s pixels
        x0, x1, y0, y1 = cx - half, cx + half - 1, cy - half, cy + half - 1
        if SHAPES[shape[i]] == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif SHAPES[shape[i]] == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        else:  # equilateral, pointing up, centred in its box's height
            h = np.sqrt(3) * half
            draw.polygon([(x0, cy + h / 2 - 1), (x1, cy + h / 2 - 1), ((x0 + x1) / 2, cy - h / 2)], fill=fill)
        small = canvas.resize((side, side), Image.Resampling.BOX)
        images[i] = np.asarray(small).transpose(2, 0, 1)
    return SourceImages(
        images=images,
        labels=shape.astype(np.int64),
        class_names=SHAPES,
        description=(f"procedural shapes (genpipe, seeded): {len(SHAPES)} shapes x {len(COLOURS)} colours on black, "
                     f"scale {sc.min_scale:g}-{sc.max_scale:g} of the side, uniform position; label = shape"),
        factors={"shape": shape, "colour": colour, "scale": scale, "x": x, "y": y},
    )


IDX_TYPES = {0x08: np.uint8}  # the IDX element types MNIST-style files use (unsigned bytes)


def read_idx(data: bytes, path: str, dims: int) -> np.ndarray:
    """An IDX file's bytes (raw or gzip, by ``path``'s suffix) of unsigned bytes with ``dims``
    dimensions: its array. InputError naming ``path`` when the magic number, the dimensions or
    the size say it is not one."""
    try:
        raw = gzip.decompress(data) if path.endswith(".gz") else data
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    if len(raw) < 4 + 4 * dims or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES or raw[3] != dims:
        got = raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
        raise InputError(f"{path}: not an IDX file of {dims}-dimensional unsigned bytes "
                         f"(magic {got}, expected 0000080{dims})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = raw[4 + 4 * dims :]
    if len(body) != int(np.prod(shape)):
        raise InputError(f"{path}: its header says {'x'.join(map(str, shape))} ({int(np.prod(shape))} bytes), "
                         f"it holds {len(body)} bytes (truncated?)")
    return np.frombuffer(body, dtype=IDX_TYPES[raw[2]]).reshape(shape)


def _idx_file(folder: Location, names: list[str], part: str) -> str:
    """The one ``*<part>`` file in ``folder``, raw or ``.gz`` (MNIST, Fashion-MNIST, KMNIST, EMNIST names)."""
    found = [n for n in names if n.endswith((part, part + ".gz"))]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(found)})"
        raise InputError(f"data.path: {folder.uri}: {what} file named *{part}[.gz]")
    return found[0]


def load_mnist_source(dc: DataConfig, seed: int = 0, storage: StorageConfig | None = None) -> SourceImages:
    """IDX files in the folder ``data.path``: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each raw or ``.gz``; a prefix such as
    ``emnist-digits-`` is fine). The t10k images are the test split."""
    folder = Location(dc.path, storage or StorageConfig())
    if (kind := folder.kind()) != "folder":
        raise InputError(f"data.path: {folder.uri}: {'not a folder' if kind else 'no such folder'}")
    names, parts, emnist = folder.files(), {}, True
    for split, prefix in (("train", "train"), ("test", "t10k")):
        found = [_idx_file(folder, names, f"{prefix}-{what}") for what in ("images-idx3-ubyte", "labels-idx1-ubyte")]
        images, labels = (read_idx(folder.read(n), folder.name(n), d) for n, d in zip(found, (3, 1)))
        emnist = emnist and found[0].lower().startswith("emnist")
        if len(images) != len(labels):
            raise InputError(f"data.path: {folder.uri}: {len(images)} {prefix} images but {len(labels)} labels")
        parts[split] = (images, labels.astype(np.int64))
    if parts["train"][0].shape[1:] != parts["test"][0].shape[1:]:
        raise InputError(f"data.path: {folder.uri}: train images are {parts['train'][0].shape[1:]}, "
                         f"test images {parts['test'][0].shape[1:]}")
    images = np.concatenate([parts["train"][0], parts["test"][0]])[:, None]  # (N, 1, H, W)
    if emnist:  # EMNIST's files hold each image transposed (column-major): turn them upright
        images = images.transpose(0, 1, 3, 2)
    labels = np.concatenate([parts["train"][1], parts["test"][1]])
    test = np.zeros(len(labels), dtype=bool)
    test[len(parts["train"][1]):] = True
    classes = int(labels.max()) + 1
    h, w = images.shape[2:]
    return SourceImages(
        images=resize_uint8(images, dc.resolution),
        labels=labels,
        class_names=tuple(str(i) for i in range(classes)),
        description=f"IDX files (MNIST layout) in {folder.uri.rsplit('/', 1)[-1]}: {len(parts['train'][1])} train + "
                    f"{len(parts['test'][1])} test images, {h}x{w} grey" + (", EMNIST (transposed upright)" if emnist else ""),
        test=test,
    )


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain data and numpy arrays, nothing else: a pickle from a user's folder can name
    any callable, and unpickling would call it (CIFAR's batches need only these)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refuses {module}.{name}: only arrays and plain data are read") from None


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        out = _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # truncated, not a pickle, or a pickle naming code
        raise InputError(f"{where}: not a CIFAR batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(out, dict):
        raise InputError(f"{where}: not a CIFAR batch (a {type(out).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in out.items()}


CIFAR_TRAIN, CIFAR_TEST = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "train"), ("test_batch", "test")


def _cifar_files(path: Location) -> dict[str, bytes]:
    """The batch files (name -> bytes) of the CIFAR "python version" in a folder or a .tar.gz."""
    names = {*CIFAR_TRAIN, *CIFAR_TEST, "batches.meta", "meta"}
    if path.kind() == "folder":
        found = {rel.rsplit("/", 1)[-1]: rel for rel in path.files(recursive=True) if rel.rsplit("/", 1)[-1] in names}
        return {n: path.read(rel) for n, rel in found.items()}
    try:
        with tarfile.open(fileobj=io.BytesIO(path.read())) as tar:
            return {m.name.rsplit("/", 1)[-1]: tar.extractfile(m).read() for m in tar.getmembers()
                    if m.isfile() and m.name.rsplit("/", 1)[-1] in names}
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"data.path: {path.uri}: not a folder or a readable .tar.gz ({type(exc).__name__})") from None


def load_cifar_source(dc: DataConfig, seed: int = 0, storage: StorageConfig | None = None) -> SourceImages:
    """CIFAR-10 or CIFAR-100, "python version": ``data_batch_1..5`` + ``test_batch`` (10) or
    ``train`` + ``test`` (100, fine labels), in the folder or ``.tar.gz`` at ``data.path``. The
    test batch is the test split. Pickles are read with a loader that builds arrays only."""
    location = Location(dc.path, storage or StorageConfig())
    if location.kind() is None:
        raise InputError(f"data.path: {location.uri}: no such folder or file")
    files = _cifar_files(location)
    path = location.uri
    train = [n for n in CIFAR_TRAIN if n in files]
    test = [n for n in CIFAR_TEST if n in files]
    if not train or not test:
        raise InputError(f"data.path: {path}: no CIFAR {'train' if not train else 'test'} batch "
                         "(data_batch_1..5 and test_batch, or train and test)")
    parts = []
    for name in (*train, *test):
        batch = _unpickle(files[name], f"{path}: {name}")
        key = "labels" if "labels" in batch else "fine_labels"
        if "data" not in batch or key not in batch:
            raise InputError(f"{path}: {name}: not a CIFAR batch (no data or labels)")
        data, labels = np.asarray(batch["data"]), np.asarray(batch[key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
            raise InputError(f"{path}: {name}: not a CIFAR batch (data {data.dtype} {data.shape}, {len(labels)} labels)")
        parts.append((data.reshape(-1, 3, 32, 32), labels, name in test))
    meta = files.get("batches.meta") or files.get("meta")
    names_key = "label_names" if "batches.meta" in files else "fine_label_names"
    labels = np.concatenate([p[1] for p in parts])
    classes = [str(i) for i in range(int(labels.max()) + 1)]
    if meta is not None:
        got = _unpickle(meta, f"{path}: meta").get(names_key)
        if got is not None and len(got) >= len(classes):
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in got]
    images = np.concatenate([p[0] for p in parts])
    is_test = np.concatenate([np.full(len(p[1]), p[2]) for p in parts])
    return SourceImages(
        images=resize_uint8(images, dc.resolution),
        labels=labels,
        class_names=tuple(classes),
        description=f"CIFAR python batches at {path.rsplit('/', 1)[-1]}: {int((~is_test).sum())} train + {int(is_test.sum())} test, 32x32 colour",
        test=is_test,
    )


@dataclass(frozen=True)
class SourceFiles:
    """A source of encoded images, read and decoded item by item (in parallel) by prepare."""

    reader: FolderReader | ParquetReader
    labels: np.ndarray  # (N,) int64, one per item
    class_names: tuple[str, ...]
    labelled: bool  # False: images without classes (conditional training is refused)
    description: str
    listing: dict  # what the card records of the source: files, a digest of names, sizes and times, ignored files
    shuffle: bool  # write each split in a seeded order (a folder listing is grouped by class); False: keep it


def _listing(uri: str, fs: pafs.FileSystem, root: str, what: str) -> list[pafs.FileInfo]:
    try:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"data.path: {uri}: no such {what}")
        if info.type == pafs.FileType.File:
            return [info]
        return [f for f in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if f.type == pafs.FileType.File]
    except OSError as exc:  # an unreachable endpoint, a missing bucket, access denied
        raise InputError(f"data.path: {uri}: cannot be listed ({first_line(exc)})") from None


def _digest(entries: list[tuple[str, int, int | None]]) -> str:
    """sha256 of the listing's (relative name, size, modification time in ns), in name order."""
    h = hashlib.sha256()
    for name, size, mtime in sorted(entries):
        h.update(f"{name}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def list_imagefolder(dc: DataConfig, storage: StorageConfig) -> SourceFiles:
    """Image files (PNG, JPEG, WebP, BMP, GIF, TIFF, by suffix, any case) under the folder or
    ``s3://`` prefix ``data.path``, hidden files and folders left out. Labels are the first-level
    sub-folder names, sorted; images all at the top level make an unlabelled dataset."""
    fs, root = locate(dc.path, storage)
    uri = dc.path.rstrip("/") if dc.path.startswith("s3://") else root
    infos = _listing(uri, fs, root, "folder")
    if len(infos) == 1 and infos[0].path == root:
        raise InputError(f"data.path: {uri}: a file, not a folder of images (data.source=imagefolder)")
    images, ignored, entries = [], 0, []
    for info in infos:
        rel = info.path[len(root):].lstrip("/")
        if _hidden(rel):
            continue
        mtime = info.mtime_ns
        entries.append((rel, int(info.size or 0), mtime))
        if rel.lower().endswith(IMAGE_SUFFIXES):
            images.append(rel)
        else:
            ignored += 1
    if not images:
        raise InputError(f"data.path: {uri}: no image files (PNG, JPEG, WebP, BMP, GIF, TIFF) in it or its sub-folders")
    images.sort()
    flat = [r for r in images if "/" not in r]
    nested = [r for r in images if "/" in r]
    if flat and nested:
        raise InputError(f"data.path: {uri}: images both at its top level ({flat[0]}) and in sub-folders "
                         f"({nested[0]}): put every image in a folder per class, or all at the top level (unlabelled)")
    classes = sorted({r.split("/", 1)[0] for r in nested})
    index = {c: k for k, c in enumerate(classes)}
    labels = np.array([index[r.split("/", 1)[0]] for r in nested], dtype=np.int64) if nested \
        else np.zeros(len(images), dtype=np.int64)
    kind = f"{len(classes)} classes (sub-folders)" if nested else "unlabelled (no sub-folders)"
    return SourceFiles(
        reader=FolderReader(fs, root, uri, images),
        labels=labels,
        class_names=tuple(classes) if nested else ("unlabelled",),
        labelled=bool(nested),
        description=f"image files under {uri}: {len(images)} images, {kind}",
        listing={"path": uri, "files": len(images), "ignored_files": ignored, "digest": _digest(entries)},
        shuffle=True,
    )


def _hf_names(schema: pa.Schema, column: str) -> list[str] | None:
    """A Hugging Face ClassLabel's names for ``column``, from the schema's metadata, if any."""
    try:
        meta = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
        names = meta["info"]["features"][column]["names"]
        return [str(n) for n in names] if isinstance(names, list) else None
    except (KeyError, TypeError, ValueError):
        return None


def list_parquet(dc: DataConfig, storage: StorageConfig) -> SourceFiles:
    """Encoded images in the Parquet file, or the folder / ``s3://`` prefix of ``*.parquet`` files,
    at ``data.path``: the column ``data.parquet.image_column`` (bytes, or Hugging Face's
    ``{bytes, path}`` struct) and the labels in ``data.parquet.label_column`` (integers, or strings
    named in sorted order; none: unlabelled). Rows keep their order."""
    pc_ = dc.parquet
    fs, root = locate(dc.path, storage)
    uri = dc.path.rstrip("/") if dc.path.startswith("s3://") else root
    infos = [i for i in _listing(uri, fs, root, "file or folder")
             if i.path == root or (i.path.endswith(".parquet") and not _hidden(i.path[len(root):].lstrip("/")))]
    if not infos:
        raise InputError(f"data.path: {uri}: no .parquet files in it")
    infos.sort(key=lambda i: i.path)
    files, group_rows, labels, entries, schema0 = [], [], [], [], None
    for info in infos:
        name = f"s3://{info.path}" if uri.startswith("s3://") else info.path
        try:
            with fs.open_input_file(info.path) as handle:
                pf = pq.ParquetFile(handle)
                schema = pf.schema_arrow
                if dc.parquet.image_column not in schema.names:
                    raise InputError(f"data.parquet.image_column: {name} has no column {pc_.image_column!r} "
                                     f"(its columns: {', '.join(schema.names)})")
                kind = schema.field(pc_.image_column).type
                if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
                        or (pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0)):
                    raise InputError(f"data.parquet.image_column: {name}: column {pc_.image_column!r} is {kind}, "
                                     "not encoded image bytes")
                if pc_.label_column is not None:
                    if pc_.label_column not in schema.names:
                        raise InputError(f"data.parquet.label_column: {name} has no column {pc_.label_column!r} "
                                         f"(its columns: {', '.join(schema.names)}; null for unlabelled images)")
                    labels.append(pf.read(columns=[pc_.label_column])[pc_.label_column].combine_chunks())
                rows = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
        except InputError:
            raise
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"data.path: {name}: not a readable Parquet file ({first_line(exc)})") from None
        schema0 = schema0 or schema
        if sum(rows):
            files.append(info.path)
            group_rows.append(rows)
        entries.append((info.path[len(root):].lstrip("/") or Path(info.path).name, int(info.size or 0), info.mtime_ns))
    total = sum(sum(r) for r in group_rows)
    if total == 0:
        raise InputError(f"data.path: {uri}: its Parquet files hold no rows")
    if pc_.label_column is None:
        y, names = np.zeros(total, dtype=np.int64), ("unlabelled",)
    else:
        column = pa.concat_arrays([a.cast(labels[0].type) for a in labels]) if len(labels) > 1 else labels[0]
        if column.null_count:
            raise InputError(f"data.parquet.label_column: {uri}: {column.null_count} rows have no label")
        if pa.types.is_integer(column.type):
            y = column.to_numpy().astype(np.int64)
            if y.min() < 0:
                raise InputError(f"data.parquet.label_column: {uri}: label {int(y.min())} (labels are 0, 1, ...)")
            found = _hf_names(schema0, pc_.label_column)
            names = tuple(found) if found and len(found) > y.max() else tuple(str(i) for i in range(int(y.max()) + 1))
        elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            values = column.to_pylist()
            names = tuple(sorted(set(values)))
            index = {n: k for k, n in enumerate(names)}
            y = np.array([index[v] for v in values], dtype=np.int64)
        else:
            raise InputError(f"data.parquet.label_column: {uri}: column {pc_.label_column!r} is {column.type}, "
                             "not integers or strings")
    return SourceFiles(
        reader=ParquetReader(fs, uri, files, group_rows, pc_.image_column),
        labels=y,
        class_names=names,
        labelled=pc_.label_column is not None,
        description=f"encoded images in Parquet at {uri}: {total} rows in {len(files)} files, "
                    + (f"{len(names)} classes ({pc_.label_column})" if pc_.label_column else "unlabelled"),
        listing={"path": uri, "files": len(files), "rows": total, "digest": _digest(entries)},
        shuffle=False,
    )


FILE_SOURCES: dict[str, Callable[[DataConfig, StorageConfig], SourceFiles]] = {
    "imagefolder": list_imagefolder,
    "parquet": list_parquet,
}

# (data settings, seed, storage settings for s3:// paths) -> every image
SOURCES: dict[str, Callable[[DataConfig, int, StorageConfig], SourceImages]] = {
    "digits": load_digits_source,
    "shapes": load_shapes_source,
    "mnist": load_mnist_source,
    "cifar": load_cifar_source,
}
