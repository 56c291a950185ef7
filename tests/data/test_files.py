"""File sources: a folder of image files (imagefolder) and encoded images in Parquet, each read
as the user's files are: PNG, JPEG, GIF, WebP, BMP, TIFF; grey, colour, 16-bit, transparent,
palette, rotated by EXIF; one corrupt and one zero-byte file; local and on S3."""

from __future__ import annotations

import io
import json

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from genpipe.cli import main
from genpipe.config import load_config
from genpipe.data import load_split, prepare_dataset
from genpipe.data.files import Policy, decode, probe
from genpipe.errors import InputError

RED, BLUE = (220, 30, 30), (30, 60, 220)


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _solid(colour, size=(24, 24), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def _write_folder(root, corrupt: bool = True) -> dict[str, tuple]:
    """Two classes, every format and colour kind, plus (``corrupt``) a truncated PNG and a zero-byte
    JPEG. Returns each good file's expected RGB colour after decoding on a black background."""
    expect = {}
    red, blue = root / "red", root / "blue"
    red.mkdir(parents=True)
    blue.mkdir()
    for i in range(6):
        (red / f"r{i}.png").write_bytes(_encode(_solid(RED), "PNG"))
        expect[f"red/r{i}.png"] = RED
        (blue / f"b{i}.jpg").write_bytes(_encode(_solid(BLUE), "JPEG", quality=95))
        expect[f"blue/b{i}.jpg"] = BLUE
    rgba = _solid((*RED, 0), mode="RGBA")  # fully transparent: the background
    rgba.paste((*RED, 255), (0, 0, 24, 12))  # the top half opaque red
    (red / "half.png").write_bytes(_encode(rgba, "PNG"))
    expect["red/half.png"] = "top red, bottom background"
    pal = _solid(RED).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    (red / "palette.gif").write_bytes(_encode(pal, "GIF"))
    expect["red/palette.gif"] = RED
    (red / "r.webp").write_bytes(_encode(_solid(RED), "WEBP", lossless=True))
    expect["red/r.webp"] = RED
    (blue / "b.bmp").write_bytes(_encode(_solid(BLUE), "BMP"))
    expect["blue/b.bmp"] = BLUE
    (blue / "b.tiff").write_bytes(_encode(_solid(BLUE), "TIFF"))
    expect["blue/b.tiff"] = BLUE
    grey16 = Image.fromarray(np.full((24, 24), 65535 // 2, dtype=np.uint16))  # 16-bit grey, mid-level
    (blue / "grey16.png").write_bytes(_encode(grey16, "PNG"))
    expect["blue/grey16.png"] = (128, 128, 128)
    wide = _solid(BLUE, (48, 24))
    wide.paste(RED, (0, 0, 24, 24))  # left half red; EXIF 6 turns it 90 degrees clockwise: top half red
    exif = Image.Exif()
    exif[0x0112] = 6
    (blue / "rotated.jpg").write_bytes(_encode(wide, "JPEG", quality=95, exif=exif.tobytes()))
    expect["blue/rotated.jpg"] = "top red, bottom blue"
    (root / "README.txt").write_text("not an image: ignored")
    (red / ".hidden.png").write_bytes(b"")  # hidden: left out, not a bad file
    if corrupt:
        good = _encode(_solid(BLUE), "PNG")
        (blue / "truncated.png").write_bytes(good[: len(good) // 2])
        (red / "empty.jpg").write_bytes(b"")
    return expect


def _by_name(cfg) -> dict[str, np.ndarray]:
    """Each prepared image by its file's name relative to the folder (through the card's index)."""
    card = json.loads((cfg.paths.data / "card.json").read_text())
    out = {}
    for shard in card["shards"]:
        t = pq.read_table(cfg.paths.data / shard["path"])
        for index, pixels in zip(t["index"].to_pylist(), t["pixels"].to_pylist()):
            out[index] = np.frombuffer(pixels, np.uint8).reshape(card["shape"])
    return out


def test_a_folder_of_every_format_skipping_the_bad_files(project):
    expect = _write_folder(project / "photos")
    cfg = load_config("params.yaml", ["data.source=imagefolder", f"data.path={project / 'photos'}",
                                      "data.resolution=16", "data.on_bad_file=skip", "data.val_fraction=0.2",
                                      "data.test_fraction=0.2"])
    card = prepare_dataset(cfg)
    assert card["shape"] == [3, 16, 16] and card["class_names"] == ["blue", "red"] and card["labelled"]
    assert card["skipped"]["count"] == 2
    assert sorted(s["file"].rsplit("/", 2)[-2] + "/" + s["file"].rsplit("/", 1)[-1] for s in card["skipped"]["first"]) \
        == ["blue/truncated.png", "red/empty.jpg"]
    assert all(s["why"] for s in card["skipped"]["first"])
    assert sum(card["counts"].values()) == len(expect) == sum(card["class_counts"].values())
    assert card["class_counts"] == {"blue": 10, "red": 9}
    assert card["source_files"]["ignored_files"] == 1 and len(card["source_files"]["digest"]) == 64
    assert card["preprocessing"] == {"channels": 3, "resize": "center_crop", "upscale": True, "background": "black",
                                     "resolution": 16}

    names = sorted(expect)  # the listing's order: what the index column counts
    images = _by_name(cfg)
    assert len(images) == len(expect)
    listed = sorted([*expect, "blue/truncated.png", "red/empty.jpg"])
    for index, img in images.items():
        name = listed[index]
        want = expect[name]
        if isinstance(want, tuple):  # a solid colour, within JPEG's error
            assert np.abs(img.reshape(3, -1).mean(axis=1) - np.array(want)).max() < 4, name
        elif want == "top red, bottom background":
            assert np.abs(img[:, 2].mean(axis=1) - RED).max() < 3 and img[:, -3].max() <= 2, name
        else:  # rotated by its EXIF orientation: red on top
            assert np.abs(img[:, 2].mean(axis=1) - RED).max() < 12 and np.abs(img[:, -3].mean(axis=1) - BLUE).max() < 12
    assert set(names) >= {listed[i] for i in images}

    train = load_split(cfg.paths.data, "train")
    assert train.images.shape[1:] == (3, 16, 16) and set(train.labels.tolist()) == {0, 1}


def test_the_first_bad_file_stops_prepare_with_one_line(project, capsys):
    _write_folder(project / "photos")
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "-S", "data.source=imagefolder", "-S", f"data.path={project / 'photos'}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    # the probe (headers only) finds the empty file before decoding reaches the truncated one
    assert "red/empty.jpg: an empty file" in err and "data.on_bad_file=skip" in err
    assert not (project / "data").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "-S", "data.source=imagefolder", "-S", f"data.path={project / 'photos'}",
              "-S", "data.on_bad_file=skip"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "skipped 2 unreadable files (first: " in out and "card.json" in out, out


def test_a_truncated_file_that_opens_fails_at_decoding(project, capsys):
    """A JPEG cut short keeps its header, so it passes the probe; decoding finds it."""
    _write_folder(project / "photos", corrupt=False)
    whole = _encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    (project / "photos/red/cut.jpg").write_bytes(whole[: len(whole) // 3])
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "-S", "data.source=imagefolder", "-S", f"data.path={project / 'photos'}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "red/cut.jpg: cannot be decoded" in err, err
    assert not any((project / "data").iterdir())  # the half-written shards went with their temp folder
    card = prepare_dataset(load_config("params.yaml", ["data.source=imagefolder", f"data.path={project / 'photos'}",
                                                       "data.on_bad_file=skip"]))
    assert [s["file"].endswith("red/cut.jpg") for s in card["skipped"]["first"]] == [True]


@pytest.mark.parametrize("case", ["missing", "a file", "empty", "no images", "mixed", "all bad", "too small",
                                  "bad colour"])
def test_folders_that_cannot_be_a_dataset_are_one_line(project, capsys, case):
    root = project / "photos"
    argv = ["prepare", "-S", "data.source=imagefolder", "-S", f"data.path={root}"]
    culprit = str(root)
    if case == "a file":
        root.parent.mkdir(exist_ok=True)
        root.write_bytes(_encode(_solid(RED), "PNG"))
    elif case == "empty":
        root.mkdir()
    elif case == "no images":
        (root / "cats").mkdir(parents=True)
        (root / "cats/notes.txt").write_text("hello")
    elif case == "mixed":
        _write_folder(root, corrupt=False)
        (root / "loose.png").write_bytes(_encode(_solid(RED), "PNG"))
        culprit = "loose.png"
    elif case == "all bad":
        (root / "a").mkdir(parents=True)
        (root / "a/x.png").write_bytes(b"")
        argv += ["-S", "data.on_bad_file=skip"]
        culprit = "none of its 1 images"
    elif case == "too small":
        _write_folder(root, corrupt=False)
        argv += ["-S", "data.upscale=false", "-S", "data.resolution=32"]
        culprit = "24x24 is smaller than data.resolution=32"
    elif case == "bad colour":
        argv += ["-S", "data.background=nocolour"]
        culprit = "data.background"
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and culprit in err, err
    assert not (project / "data").exists()


def test_flat_images_are_unlabelled_and_conditional_training_is_refused(project, capsys):
    root = project / "flat"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(40):
        grey = rng.integers(0, 255, (20, 30), dtype=np.uint8)
        Image.fromarray(grey, "L").save(root / f"{i:03d}.png")
    cfg = load_config("params.yaml", ["data.source=imagefolder", f"data.path={root}", "data.resolution=16",
                                      "data.resize=pad", "data.background=white"])
    card = prepare_dataset(cfg)
    assert card["labelled"] is False and card["num_classes"] == 1 and card["shape"] == [1, 16, 16]
    img = next(iter(_by_name(cfg).values()))[0]
    assert (img[:2] == 255).all() and (img[-2:] == 255).all()  # 30x20 padded to square on white: bands top and bottom
    assert img[5:11].std() > 20  # the picture between them
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--family", "vae", "-S", "vae.conditional=true", "-S", "train.runner=local"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "vae.conditional" in err and "no labels" in err, err


def test_decoding_policies_on_one_image():
    """center_crop keeps the middle, resize stretches, pad keeps all on the background; grey is luma."""
    im = Image.new("RGB", (40, 20), RED)
    im.paste(BLUE, (10, 0, 30, 20))  # a blue middle square between red bands
    data = _encode(im, "PNG")
    policy = Policy(resolution=10, resize="center_crop", upscale=True, background=(0, 255, 0), channels=3)
    crop = decode(data, policy)
    assert crop.shape == (3, 10, 10) and np.abs(crop[:, :, 2:8].reshape(3, -1).mean(axis=1) - BLUE).max() < 2
    stretched = decode(data, Policy(10, "resize", True, (0, 255, 0), 3))
    assert np.abs(stretched[:, :, 0] - np.array(RED)[:, None]).max() < 2  # the red band survives at the edge
    padded = decode(data, Policy(10, "pad", True, (0, 255, 0), 3))
    assert (padded[:, 0] == np.array([0, 255, 0])[:, None]).all()  # a green band on top
    grey = decode(data, Policy(10, "center_crop", True, (0, 0, 0), 1))
    assert grey.shape == (1, 10, 10) and abs(int(grey.mean()) - round(0.299 * 30 + 0.587 * 60 + 0.114 * 220)) <= 1
    assert probe(data, policy) == (True, 40, 20)
    assert probe(_encode(Image.new("L", (5, 5)), "PNG"), policy)[0] is False
    grey_palette = Image.new("L", (5, 5), 90).convert("P")
    assert probe(_encode(grey_palette, "PNG"), policy)[0] is False  # a palette of greys is grey


def _parquet_rows(n: int, hf: bool = False):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, n)
    colours = [RED, BLUE, (30, 200, 30)]
    images = [_encode(_solid(colours[y], (20, 20)), "PNG") for y in labels]
    column = (pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images)]) if hf
              else pa.array(images, pa.binary()))
    return pa.table({"img": column, "cls": pa.array(labels.astype(np.int64))}), labels, colours


@pytest.mark.parametrize("hf", [False, True])
def test_parquet_of_encoded_images(project, hf):
    table, labels, colours = _parquet_rows(45, hf)
    folder = project / "export"
    folder.mkdir()
    pq.write_table(table.slice(0, 30), folder / "train-00000.parquet", row_group_size=7)
    pq.write_table(table.slice(30), folder / "train-00001.parquet", row_group_size=7)
    cfg = load_config("params.yaml", ["data.source=parquet", f"data.path={folder}", "data.parquet.image_column=img",
                                      "data.parquet.label_column=cls", "data.resolution=8", "data.shard_rows=10",
                                      "data.workers=1"])
    card = prepare_dataset(cfg)
    assert card["shape"] == [3, 8, 8] and card["class_names"] == ["0", "1", "2"] and sum(card["counts"].values()) == 45
    for index, img in _by_name(cfg).items():  # every row's image is its own, with its own label
        assert np.abs(img.reshape(3, -1).mean(axis=1) - colours[labels[index]]).max() < 2, index
    assert card["source_files"]["rows"] == 45 and card["source_files"]["files"] == 2


def test_parquet_on_s3_and_its_bad_columns(project, bucket, capsys):
    table, labels, _ = _parquet_rows(20)
    buf = io.BytesIO()
    pq.write_table(table.append_column("name", pa.array([f"c{y}" for y in labels])), buf)
    boto3.client("s3").put_object(Bucket=bucket, Key="exports/images.parquet", Body=buf.getvalue())
    uri = f"s3://{bucket}/exports/images.parquet"
    cfg = load_config("params.yaml", ["data.source=parquet", f"data.path={uri}", "data.parquet.image_column=img",
                                      "data.parquet.label_column=name", "data.resolution=8"])
    card = prepare_dataset(cfg)
    assert card["class_names"] == ["c0", "c1", "c2"] and card["source_files"]["path"] == uri
    for setting, culprit in (("data.parquet.image_column=pixels", "data.parquet.image_column"),
                             ("data.parquet.label_column=nope", "data.parquet.label_column"),
                             ("data.parquet.image_column=cls", "not encoded image bytes")):
        with pytest.raises(SystemExit) as exit_:
            main(["prepare", "-S", "data.source=parquet", "-S", f"data.path={uri}", "-S", "data.parquet.image_column=img",
                  "-S", setting])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and culprit in err, err
    with pytest.raises(InputError, match=rf"data.path: s3://{bucket}/nothing: no such file or folder"):
        prepare_dataset(load_config("params.yaml", ["data.source=parquet", f"data.path=s3://{bucket}/nothing"]))


def test_a_folder_on_s3(project, bucket):
    local = project / "photos"
    _write_folder(local, corrupt=False)
    s3 = boto3.client("s3")
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        s3.put_object(Bucket=bucket, Key=f"photos/{f.relative_to(local).as_posix()}", Body=f.read_bytes())
    a = prepare_dataset(load_config("params.yaml", ["data.source=imagefolder", f"data.path={local}"]))
    first = _by_name(load_config("params.yaml", []))
    b = prepare_dataset(load_config("params.yaml", ["data.source=imagefolder", f"data.path=s3://{bucket}/photos"]))
    assert b["sha256"] == a["sha256"]  # the same images, labels and splits, whichever store held them
    assert b["source_files"]["files"] == a["source_files"]["files"] and len(first) == sum(b["counts"].values())


def test_two_decoding_processes_write_the_same_dataset(project, capsys):
    """Enough files for several probe tasks and shards: 2 spawned processes give the dataset one
    process gives, byte for byte; a bad file found by a worker is the same one line."""
    root = project / "many"
    rng = np.random.default_rng(3)
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        for i in range(200):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / c / f"{i:03d}.png")
    base = ["data.source=imagefolder", f"data.path={root}", "data.resolution=8", "data.shard_rows=100"]
    one = prepare_dataset(load_config("params.yaml", [*base, "data.workers=1"]))
    two = prepare_dataset(load_config("params.yaml", [*base, "data.workers=2"]))
    assert len(two["shards"]) == 6 and two["sha256"] == one["sha256"] and two["counts"] == one["counts"]
    # each split's rows in a seeded order, so a shard holds every class (the listing is grouped by class)
    first = pq.read_table(project / "data/prepared" / two["shards"][0]["path"])
    assert set(first["label"].to_pylist()) == {0, 1, 2}
    (root / "b/050.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", *[a for kv in base for a in ("-S", kv)], "-S", "data.workers=2"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "b/050.png: not an image Pillow can read" in err, err
    assert json.loads((project / "data/prepared/card.json").read_text())["sha256"] == one["sha256"]  # the old one kept


def test_idx_files_and_a_cifar_archive_on_s3(project, bucket):
    """mnist and cifar read their files from s3:// as from a folder: the same dataset."""
    from tests.data.test_sources import _write_cifar, _write_mnist

    s3 = boto3.client("s3")
    _write_mnist(project / "idx", gz=True)
    for f in sorted((project / "idx").iterdir()):
        s3.put_object(Bucket=bucket, Key=f"mnist/{f.name}", Body=f.read_bytes())
    archive, _ = _write_cifar(project / "cifar", tar=True)
    s3.put_object(Bucket=bucket, Key="cifar/cifar-10-python.tar.gz", Body=archive.read_bytes())
    for source, local, remote in (("mnist", project / "idx", f"s3://{bucket}/mnist"),
                                  ("cifar", archive, f"s3://{bucket}/cifar/cifar-10-python.tar.gz")):
        a = prepare_dataset(load_config("params.yaml", [f"data.source={source}", f"data.path={local}"]))
        b = prepare_dataset(load_config("params.yaml", [f"data.source={source}", f"data.path={remote}"]))
        assert b["sha256"] == a["sha256"] and b["counts"] == a["counts"], source
    with pytest.raises(InputError, match=rf"^data.path: s3://{bucket}/nothing: no such folder$"):
        prepare_dataset(load_config("params.yaml", ["data.source=mnist", f"data.path=s3://{bucket}/nothing"]))
