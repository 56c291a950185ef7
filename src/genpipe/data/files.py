"""A source's files: where they are (a local path or ``s3://``, through pyarrow's filesystems)
and how one encoded image becomes ``(C, R, R)`` uint8 (Pillow, with the colour and size policies
of ``data.channels``, ``data.resize``, ``data.upscale`` and ``data.background``).

Everything here is picklable and free of global state, so :mod:`genpipe.data.prepare` can run it
in worker processes.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

from genpipe.errors import InputError

if TYPE_CHECKING:  # not imported at run time: worker processes stay free of torch (genpipe.config imports it)
    from genpipe.config import DataConfig, StorageConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".webp", ".bmp", ".gif", ".tif", ".tiff")
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees


def s3_filesystem(storage: StorageConfig) -> pafs.S3FileSystem:
    """pyarrow's S3 client from the ``storage`` settings, each falling back to the AWS variables
    (credentials: else the AWS default chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a role)."""
    endpoint = storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    key = storage.access_key_id.get_secret_value() if storage.access_key_id else None
    secret = storage.secret_access_key.get_secret_value() if storage.secret_access_key else None
    return pafs.S3FileSystem(
        access_key=key, secret_key=secret if key else None,
        region=storage.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        endpoint_override=endpoint, connect_timeout=storage.connect_timeout, request_timeout=storage.read_timeout,
    )


def locate(uri: str, storage: StorageConfig) -> tuple[pafs.FileSystem, str]:
    """The filesystem and root path of a local path (``~`` expanded) or ``s3://bucket/prefix``."""
    if uri.startswith("s3://"):
        return s3_filesystem(storage), uri[len("s3://"):].rstrip("/")
    return pafs.LocalFileSystem(), Path(uri).expanduser().resolve().as_posix()


class Location:
    """A source's local path or ``s3://`` URI, for the sources that read whole files (mnist, cifar)."""

    def __init__(self, uri: str, storage: StorageConfig):
        self.fs, self.root = locate(uri, storage)
        self.uri = uri.rstrip("/") if uri.startswith("s3://") else self.root

    def name(self, rel: str = "") -> str:
        return f"{self.uri}/{rel}" if rel else self.uri

    def kind(self) -> str | None:
        """"folder", "file", or None when nothing is there; an unreachable store is one line."""
        try:
            info = self.fs.get_file_info(self.root)
        except OSError as exc:
            raise InputError(f"data.path: {self.uri}: cannot be read ({first_line(exc)})") from None
        return {pafs.FileType.Directory: "folder", pafs.FileType.File: "file"}.get(info.type)

    def files(self, recursive: bool = False) -> list[str]:
        """The files under the folder, as paths relative to it, sorted."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=recursive))
        except OSError as exc:
            raise InputError(f"data.path: {self.uri}: cannot be listed ({first_line(exc)})") from None
        return sorted(i.path[len(self.root):].lstrip("/") for i in infos if i.type == pafs.FileType.File)

    def read(self, rel: str = "") -> bytes:
        try:
            # compression=None: the bytes as stored (pyarrow would gunzip a .gz by its suffix)
            with self.fs.open_input_stream(f"{self.root}/{rel}" if rel else self.root, compression=None) as handle:
                return handle.read()
        except OSError as exc:
            raise InputError(f"{self.name(rel)}: cannot be read ({first_line(exc)})") from None


def first_line(exc: BaseException) -> str:
    """An exception's first line, short (pyarrow's and Pillow's messages name no credentials)."""
    text = str(exc).strip()
    return (text.splitlines()[0][:200] if text else type(exc).__name__)


class BadImage(Exception):
    """One file (or row) that is not a usable image; the message says why."""


@dataclass(frozen=True)
class Policy:
    """How an encoded image becomes ``(channels, resolution, resolution)`` uint8."""

    resolution: int
    resize: str  # center_crop | resize | pad
    upscale: bool
    background: tuple[int, int, int]
    channels: int = 0  # 1 or 3; 0 while the source is only being probed

    @classmethod
    def of(cls, dc: DataConfig, channels: int = 0) -> Policy:
        return cls(dc.resolution, dc.resize, dc.upscale, ImageColor.getrgb(dc.background)[:3], channels)

    def too_small(self, width: int, height: int) -> bool:
        """Whether this size would be scaled up (refused when ``upscale`` is false)."""
        side = {"center_crop": min(width, height), "pad": max(width, height)}.get(self.resize, min(width, height))
        return not self.upscale and side < self.resolution


def _open(data: bytes) -> Image.Image:
    if not data:
        raise BadImage("an empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage("not an image Pillow can read") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise BadImage(f"more than {Image.MAX_IMAGE_PIXELS} pixels (a decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"not readable ({first_line(exc)})") from None


def is_colour(im: Image.Image) -> bool:
    """Colour by the file's mode, from its header: a palette counts as grey when every entry is."""
    if im.mode in ("P", "PA"):
        pal = im.getpalette() or []
        return any(pal[i] != pal[i + 1] or pal[i] != pal[i + 2] for i in range(0, len(pal) - 2, 3))
    return im.mode not in GREY_MODES


def probe(data: bytes, policy: Policy) -> tuple[bool, int, int]:
    """(colour, width, height after EXIF orientation) from the header, without decoding the pixels."""
    im = _open(data)
    try:
        width, height = im.size
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block: Pillow's exif_transpose skips it too
            orientation = 1
        if orientation in SWAPS_SIDES:
            width, height = height, width
        if policy.too_small(width, height):
            raise BadImage(f"{width}x{height} is smaller than data.resolution={policy.resolution} under "
                           f"data.resize={policy.resize} (data.upscale=false)")
        return is_colour(im), width, height
    finally:
        im.close()


def _eight_bit(im: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey (I;16*, I) scaled from 0-65535 to 0-255; float grey (F) from 0-1
    (or clipped to 0-255 when its values go beyond 1)."""
    if im.mode.startswith("I"):
        arr = np.asarray(im, dtype=np.float64) / 257.0
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        arr = arr * 255.0 if np.nanmax(arr, initial=0.0) <= 1.0 else arr
    else:
        return im
    return Image.fromarray(np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8), mode="L")


def decode(data: bytes, policy: Policy) -> np.ndarray:
    """One encoded image as ``(channels, resolution, resolution)`` uint8: the first frame, EXIF
    orientation applied, 16-bit scaled, transparency composited on the background, converted to
    grey (ITU-R 601 luma) or RGB, then sized by the policy (bicubic)."""
    im = _open(data)
    try:
        im.seek(0)
        im.load()
        im = ImageOps.exif_transpose(im) or im
        width, height = im.size
        if policy.too_small(width, height):
            raise BadImage(f"{width}x{height} is smaller than data.resolution={policy.resolution} under "
                           f"data.resize={policy.resize} (data.upscale=false)")
        im = _eight_bit(im)
        if im.mode in ALPHA_MODES or "transparency" in im.info:
            rgba = im.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (*policy.background, 255))
            im = Image.alpha_composite(canvas, rgba)
        im = im.convert("RGB" if policy.channels == 3 else "L")
        side = (policy.resolution, policy.resolution)
        fill = policy.background if policy.channels == 3 else Image.new("RGB", (1, 1), policy.background).convert(
            "L").getpixel((0, 0))  # the background's luma, as the image's
        if policy.resize == "center_crop":
            im = ImageOps.fit(im, side, Image.Resampling.BICUBIC)
        elif policy.resize == "pad":
            im = ImageOps.pad(im, side, Image.Resampling.BICUBIC, color=fill)
        else:
            im = im.resize(side, Image.Resampling.BICUBIC)
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt pixel data
        raise BadImage(f"cannot be decoded ({first_line(exc)})") from None
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """A file's bytes; an unreadable one is a :class:`BadImage`, an unreachable store an InputError."""
    try:
        with fs.open_input_stream(path, compression=None) as f:
            return f.read()
    except FileNotFoundError:
        raise BadImage("vanished while prepare ran") from None
    except PermissionError:
        raise BadImage("permission denied") from None
    except OSError as exc:
        raise BadImage(f"cannot be read ({first_line(exc)})") from None



class FolderReader:
    """The image files of an ``imagefolder`` source, item i being ``paths[i]`` under ``root``."""

    def __init__(self, fs: pafs.FileSystem, root: str, uri: str, paths: list[str]):
        self.fs, self.root, self.uri, self.paths = fs, root, uri, paths

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, i: int) -> str:
        return f"{self.uri}/{self.paths[i]}"

    def read(self, ids: np.ndarray) -> list[bytes | BadImage]:
        out: list[bytes | BadImage] = []
        for i in ids:
            try:
                out.append(read_bytes(self.fs, f"{self.root}/{self.paths[i]}"))
            except BadImage as bad:
                out.append(bad)
        return out


class ParquetReader:
    """The encoded images of a ``parquet`` source, item i being the i-th row over its files in order."""

    def __init__(self, fs: pafs.FileSystem, uri: str, files: list[str], group_rows: list[list[int]], column: str):
        self.fs, self.uri, self.files, self.column = fs, uri, files, column
        self.group_starts = [np.concatenate([[0], np.cumsum(g)]) for g in group_rows]  # per file, rows before each group
        self.file_starts = np.concatenate([[0], np.cumsum([int(g[-1]) for g in self.group_starts])])

    def __len__(self) -> int:
        return int(self.file_starts[-1])

    def _where(self, i: int) -> tuple[int, int]:
        f = int(np.searchsorted(self.file_starts, i, side="right") - 1)
        return f, int(i - self.file_starts[f])

    def name(self, i: int) -> str:
        f, row = self._where(i)
        return f"{self._file_uri(f)} row {row}"

    def _file_uri(self, f: int) -> str:
        return f"s3://{self.files[f]}" if self.uri.startswith("s3://") else self.files[f]

    def read(self, ids: np.ndarray) -> list[bytes | BadImage]:
        """The rows ``ids`` (mostly consecutive): each file's row groups that hold them, read once."""
        out: list[bytes | BadImage] = [BadImage("not read")] * len(ids)
        where = [self._where(int(i)) for i in ids]
        for f in sorted({w[0] for w in where}):
            mine = [(k, row) for k, (ff, row) in enumerate(where) if ff == f]
            starts = self.group_starts[f]
            groups = sorted({int(np.searchsorted(starts, row, side="right") - 1) for _, row in mine})
            try:
                with self.fs.open_input_file(self.files[f]) as handle:
                    table = pq.ParquetFile(handle).read_row_groups(groups, columns=[self.column])
            except (pa.ArrowException, OSError) as exc:
                raise InputError(f"data.path: {self._file_uri(f)}: cannot be read ({first_line(exc)})") from None
            column = table[self.column].combine_chunks()
            if pa.types.is_struct(column.type):  # Hugging Face's Image feature: {bytes, path}
                column = column.field("bytes")
            values = column.to_pylist()
            base = {g: sum(int(starts[h + 1] - starts[h]) for h in groups[:n]) for n, g in enumerate(groups)}
            for k, row in mine:
                g = int(np.searchsorted(starts, row, side="right") - 1)
                value = values[base[g] + row - int(starts[g])]
                out[k] = value if isinstance(value, bytes) else BadImage("no image bytes in this row")
        return out


# Worker processes: the reader is set once per process, then chunks of item ids are mapped.
_READER = None  # a worker process's reader, set once by its initializer


def set_reader(reader) -> None:
    global _READER
    _READER = reader


def probe_chunk(ids: np.ndarray, policy: Policy, reader=None) -> list[tuple[bool, int, int] | str]:
    """Each item's (colour, width, height), or why it is not a usable image."""
    out: list[tuple[bool, int, int] | str] = []
    for data in (reader or _READER).read(ids):
        try:
            out.append(probe(data, policy) if isinstance(data, bytes) else str(data))
        except BadImage as bad:
            out.append(str(bad))
    return out


def decode_chunk(ids: np.ndarray, policy: Policy, reader=None) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """The items' pixels (the good ones, in order) and (position, why) for each bad one."""
    side = policy.resolution
    pixels = np.empty((len(ids), policy.channels, side, side), dtype=np.uint8)
    good, bad = [], []
    for k, data in enumerate((reader or _READER).read(ids)):
        try:
            if not isinstance(data, bytes):
                raise data
            pixels[len(good)] = decode(data, policy)
            good.append(k)
        except BadImage as why:
            bad.append((k, str(why)))
    return pixels[: len(good)], bad
