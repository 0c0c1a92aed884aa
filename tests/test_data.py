"""Tests for lsdseg.data on tiny synthetic datasets (no real data needed, except one test)."""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch

from lsdseg.data import (
    AugmentConfig,
    DataError,
    Pair,
    find_pairs,
    load_sample,
    read_image,
    read_mask,
    resize_pair,
    split_pairs,
)
from lsdseg.dataset import SegmentationDataset

# ----------------------------------------------------------------------------- helpers


def write_rgb(path: Path, rgb: np.ndarray, jpeg_quality: int | None = None) -> Path:
    """Write an RGB (or grey/RGBA-as-given) array with OpenCV, handling the BGR swap."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rgb
    if rgb.ndim == 3 and rgb.shape[2] == 3:
        arr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif rgb.ndim == 3 and rgb.shape[2] == 4:
        arr = cv2.cvtColor(rgb, cv2.COLOR_RGBA2BGRA)
    params = [] if jpeg_quality is None else [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
    assert cv2.imwrite(str(path), arr, params)
    return path


def write_png_raw(path: Path, arr: np.ndarray) -> Path:
    """Minimal PNG encoder (OpenCV cannot write grey+alpha PNGs)."""
    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    row = w * c * arr.dtype.itemsize
    data = b"".join(b"\x00" + raw[i * row : (i + 1) * row] for i in range(h))

    def chunk(tag: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(tag + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, arr.dtype.itemsize * 8, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(data))
        + chunk(b"IEND", b"")
    )
    return path


def random_rgb(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def disc(h: int = 24, w: int = 32, cy: int = 10, cx: int = 12, r: int = 6) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def make_labelled(
    root: Path,
    stems: list[str],
    img_dir: str = "images",
    mask_dir: str = "masks",
    img_ext: str = ".png",
    mask_ext: str = ".png",
    mask_suffix: str = "",
) -> Path:
    for i, stem in enumerate(stems):
        write_rgb(root / img_dir / f"{stem}{img_ext}", random_rgb(seed=i))
        write_rgb(root / mask_dir / f"{stem}{mask_suffix}{mask_ext}", disc().astype(np.uint8) * 255)
    return root


# ----------------------------------------------------------------------------- read_image


def test_read_image_rgb_order(tmp_path: Path) -> None:
    rgb = random_rgb()
    out = read_image(write_rgb(tmp_path / "a.png", rgb))
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, rgb)


def test_read_image_grey_replicated(tmp_path: Path) -> None:
    grey = random_rgb()[..., 0]
    out = read_image(write_rgb(tmp_path / "g.png", grey))
    assert out.shape == (24, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_read_image_grey_alpha(tmp_path: Path) -> None:
    ga = np.stack([random_rgb()[..., 0], np.full((24, 32), 7, np.uint8)], axis=-1)
    for path in (
        write_png_raw(tmp_path / "ga.png", ga),  # OpenCV decodes this as 4 channels
        tmp_path / "ga.tif",
    ):
        if path.suffix == ".tif":
            tifffile.imwrite(path, ga, photometric="minisblack", extrasamples=["unassalpha"])
        out = read_image(path)
        assert out.shape == (24, 32, 3)
        for c in range(3):
            np.testing.assert_array_equal(out[..., c], ga[..., 0])


def test_read_image_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.concatenate([random_rgb(), np.zeros((24, 32, 1), np.uint8)], axis=-1)
    out = read_image(write_rgb(tmp_path / "a.png", rgba))
    np.testing.assert_array_equal(out, rgba[..., :3])


def test_read_image_16bit_divides_by_257(tmp_path: Path) -> None:
    rgb8 = random_rgb()
    out = read_image(write_rgb(tmp_path / "a16.png", rgb8.astype(np.uint16) * 257))
    np.testing.assert_array_equal(out, rgb8)
    grey16 = np.array([[0, 257, 65535, 32896]], np.uint16)
    out = read_image(write_rgb(tmp_path / "g16.png", grey16))
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 255, 128])


def test_read_image_float_tiff(tmp_path: Path) -> None:
    unit = np.array([[0.0, 0.5, 1.0, 1.0]], np.float32)
    tifffile.imwrite(tmp_path / "f.tif", unit)
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif")[0, :, 1], [0, 128, 255, 255])
    big = np.array([[0.0, 500.0, 1000.0]], np.float32)
    tifffile.imwrite(tmp_path / "b.tif", big)
    np.testing.assert_array_equal(read_image(tmp_path / "b.tif")[0, :, 2], [0, 128, 255])


def test_read_image_tiff_rgb_tagged_grey(tmp_path: Path) -> None:
    """CVC-ClinicDB style: 3 samples/pixel but photometric=minisblack; OpenCV reads 1 channel."""
    rgb = random_rgb()
    path = tmp_path / "1.tif"
    tifffile.imwrite(path, rgb, photometric="minisblack", planarconfig="contig")
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).ndim == 2  # the trap being avoided
    np.testing.assert_array_equal(read_image(path), rgb)


def test_read_image_tiff_planar(tmp_path: Path) -> None:
    rgb = random_rgb()
    path = tmp_path / "p.tif"
    tifffile.imwrite(path, rgb.transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(path), rgb)


def test_read_image_tiff_detected_by_content(tmp_path: Path) -> None:
    rgb = random_rgb()
    path = tmp_path / "misnamed.png"
    tifffile.imwrite(path, rgb, photometric="minisblack", planarconfig="contig")
    np.testing.assert_array_equal(read_image(path), rgb)


def test_read_image_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        read_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    with pytest.raises(DataError, match=r"bad\.jpg"):
        read_image(bad)
    with pytest.raises(DataError, match=r"bad\.jpg"):
        read_mask(bad)


@pytest.mark.parametrize("name", ["empty.png", "empty.jpg", "empty"])
def test_zero_byte_file_is_a_data_error_not_an_opencv_assertion(tmp_path: Path, name) -> None:
    (tmp_path / name).touch()
    for read in (read_image, read_mask):
        with pytest.raises(DataError, match=rf"{name}: the file is empty \(0 bytes\)"):
            read(tmp_path / name)
    cv2.imwrite(str(tmp_path / "image.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=rf"{name}: the file is empty"):
        load_sample(Pair(tmp_path / "image.png", tmp_path / name))  # an empty mask


# ----------------------------------------------------------------------------- read_mask


@pytest.mark.parametrize("fg", [1, 255])
def test_read_mask_binary_values(tmp_path: Path, fg: int) -> None:
    truth = disc()
    out = read_mask(write_rgb(tmp_path / "m.png", truth.astype(np.uint8) * fg))
    assert out.dtype == np.bool_ and out.shape == truth.shape
    np.testing.assert_array_equal(out, truth)


def test_read_mask_rgb_takes_channel_max(tmp_path: Path) -> None:
    truth = disc()
    rgb = np.zeros((*truth.shape, 3), np.uint8)
    rgb[truth, 0] = 255  # red annotation
    np.testing.assert_array_equal(read_mask(write_rgb(tmp_path / "m.png", rgb)), truth)


def test_read_mask_anti_aliased_threshold_127(tmp_path: Path) -> None:
    values = np.array([[0, 50, 127, 128, 200, 255]], np.uint8)
    out = read_mask(write_rgb(tmp_path / "m.png", values))
    np.testing.assert_array_equal(out[0], [False, False, False, True, True, True])


def test_read_mask_jpeg_artefacts(tmp_path: Path) -> None:
    truth = disc(64, 64, 30, 34, 17)
    path = write_rgb(tmp_path / "m.jpg", truth.astype(np.uint8) * 255, jpeg_quality=40)
    raw = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert len(np.unique(raw)) > 2  # really has artefacts
    assert (read_mask(path) == truth).mean() > 0.995
    empty = write_rgb(tmp_path / "e.jpg", np.zeros((16, 16), np.uint8))
    assert not read_mask(empty).any()


def test_read_mask_16bit_and_float(tmp_path: Path) -> None:
    m16 = np.array([[0, 1000, 32767, 32768, 65535]], np.uint16)
    np.testing.assert_array_equal(read_mask(write_rgb(tmp_path / "m.png", m16))[0], [0, 0, 0, 1, 1])
    prob = np.array([[0.0, 0.2, 0.5, 0.51, 1.0]], np.float32)
    tifffile.imwrite(tmp_path / "p.tif", prob)
    np.testing.assert_array_equal(read_mask(tmp_path / "p.tif")[0], [0, 0, 0, 1, 1])


# ----------------------------------------------------------------------------- find_pairs


def test_find_pairs_kvasir(tmp_path: Path) -> None:
    make_labelled(tmp_path, ["b", "a", "c"], img_ext=".jpg", mask_ext=".jpg")
    (tmp_path / "images" / "notes.txt").write_text("ignored")
    (tmp_path / "images" / ".DS_Store").write_bytes(b"\0")
    layout, pairs = find_pairs(tmp_path)
    assert layout == "kvasir"
    assert [p.name for p in pairs] == ["a", "b", "c"]
    assert all(p.mask == tmp_path / "masks" / f"{p.name}.jpg" for p in pairs)
    assert [p.group for p in pairs] == ["a", "b", "c"]


def test_find_pairs_cvc_sequences(tmp_path: Path) -> None:
    make_labelled(tmp_path, [str(i) for i in range(1, 13)])
    rows = [f"{i}.png,{1 if i <= 4 else 2 if i <= 10 else 3}" for i in range(1, 13)]
    (tmp_path / "sequences.csv").write_text("file,sequence\n" + "\n".join(rows) + "\n")
    layout, pairs = find_pairs(tmp_path)
    assert layout == "cvc"
    assert [p.name for p in pairs] == [str(i) for i in range(1, 13)]  # natural sort
    assert [p.group for p in pairs] == ["1"] * 4 + ["2"] * 6 + ["3"] * 2
    assert find_pairs(tmp_path, layout="pranet")[0] == "cvc"


def test_find_pairs_bad_sequences_csv(tmp_path: Path) -> None:
    make_labelled(tmp_path, ["1"])
    (tmp_path / "sequences.csv").write_text("name,video_id\n1.png,1\n")
    with pytest.raises(DataError, match=r"sequences\.csv"):
        find_pairs(tmp_path)


def test_find_pairs_sequences_csv_with_a_huge_field(tmp_path: Path) -> None:
    make_labelled(tmp_path, ["1"])
    (tmp_path / "sequences.csv").write_text("file,sequence\n1.png," + "x" * 200_000 + "\n")
    with pytest.raises(DataError, match=r"sequences\.csv is not a readable CSV file"):
        find_pairs(tmp_path)


def test_find_pairs_cvc_tiff(tmp_path: Path) -> None:
    rgb = random_rgb()
    for d in ("images", "masks"):
        (tmp_path / "Original" / d).mkdir(parents=True)
    root = tmp_path / "Original"
    tifffile.imwrite(root / "images/1.tif", rgb, photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(root / "masks/1.tif", disc().astype(np.uint8) * 255)
    layout, pairs = find_pairs(tmp_path)  # descends into the single wrapper folder
    assert layout == "cvc" and len(pairs) == 1
    image, mask = load_sample(pairs[0])
    np.testing.assert_array_equal(image, rgb)
    np.testing.assert_array_equal(mask, disc())


def test_find_pairs_original_cvc_release(tmp_path: Path) -> None:
    make_labelled(tmp_path, ["1", "2"], img_dir="Original", mask_dir="Ground Truth")
    layout, pairs = find_pairs(tmp_path)
    assert layout == "generic" and [p.mask.parent.name for p in pairs] == ["Ground Truth"] * 2


def test_find_pairs_isic(tmp_path: Path) -> None:
    inp = tmp_path / "ISIC2018_Task1-2_Training_Input"
    gt = tmp_path / "ISIC2018_Task1_Training_GroundTruth"
    for i, ident in enumerate(["0000002", "0000000", "0000001"]):
        write_rgb(inp / f"ISIC_{ident}.jpg", random_rgb(seed=i))
        write_rgb(gt / f"ISIC_{ident}_segmentation.png", disc().astype(np.uint8) * 255)
    (inp / "LICENSE.txt").write_text("x")
    layout, pairs = find_pairs(tmp_path)
    assert layout == "isic"
    assert [p.name for p in pairs] == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
    assert all(p.mask.name == f"{p.name}_segmentation.png" for p in pairs)


def test_find_pairs_generic_suffixes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_labelled(tmp_path, ["x1", "x2"], img_dir="imgs", mask_dir="labels", mask_suffix="_mask")
    write_rgb(tmp_path / "imgs" / "x3.png", random_rgb())  # no mask
    write_rgb(tmp_path / "labels" / "orphan_gt.png", disc().astype(np.uint8))  # no image
    with caplog.at_level(logging.WARNING, logger="lsdseg.data"):
        layout, pairs = find_pairs(tmp_path)
    assert layout == "generic"
    assert {p.name: p.mask.name if p.mask else None for p in pairs} == {
        "x1": "x1_mask.png",
        "x2": "x2_mask.png",
        "x3": None,
    }
    text = caplog.text
    assert "1 of 3 images have no mask" in text and "1 masks have no matching image" in text


def test_find_pairs_images_only(tmp_path: Path) -> None:
    for i in range(3):
        write_rgb(tmp_path / f"frame_{i:03d}.png", random_rgb(seed=i))
    layout, pairs = find_pairs(tmp_path)
    assert layout == "images-only"
    assert [p.mask for p in pairs] == [None] * 3 and pairs[0].name == "frame_000"
    sub = tmp_path / "ds"
    make_labelled(sub, ["a"])
    assert find_pairs(sub, layout="images-only") == ("images-only", [Pair(sub / "images/a.png")])


def test_find_pairs_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        find_pairs(tmp_path / "missing")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(DataError, match="expected one of"):
        find_pairs(tmp_path / "empty")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "readme.md").write_text("x")
    with pytest.raises(DataError, match="images/ \\+ masks/"):
        find_pairs(tmp_path / "txt")
    with pytest.raises(ValueError, match="layout"):
        find_pairs(tmp_path, layout="coco")
    make_labelled(tmp_path / "k", ["a"])
    with pytest.raises(DataError, match="isic"):
        find_pairs(tmp_path / "k", layout="isic")


# ----------------------------------------------------------------------------- split / load


def grouped_pairs() -> list[Pair]:
    sizes = {"1": 5, "2": 3, "3": 8, "4": 2, "5": 6, "6": 4}
    return [
        Pair(Path(f"/d/{g}_{i}.png"), Path(f"/d/m/{g}_{i}.png"), group=g)
        for g, n in sizes.items()
        for i in range(n)
    ]


def test_split_pairs_groups_intact_and_deterministic() -> None:
    pairs = grouped_pairs()
    train, val = split_pairs(pairs, val_fraction=0.25, seed=3)
    assert not {p.group for p in train} & {p.group for p in val}
    assert len(train) + len(val) == len(pairs) and len(val) >= 0.25 * len(pairs)
    assert split_pairs(pairs, val_fraction=0.25, seed=3) == (train, val)
    assert train == [p for p in pairs if p in train]  # input order kept
    splits = {tuple(p.group for p in split_pairs(pairs, 0.25, seed=s)[1]) for s in range(8)}
    assert len(splits) > 1  # the seed matters


def test_split_pairs_val_groups_and_errors() -> None:
    pairs = grouped_pairs()
    train, val = split_pairs(pairs, val_groups=["2", "5"])
    assert {p.group for p in val} == {"2", "5"} and len(val) == 9
    assert {p.group for p in train} == {"1", "3", "4", "6"}
    assert split_pairs(pairs, val_fraction=0.0) == (pairs, [])
    with pytest.raises(ValueError, match="99"):
        split_pairs(pairs, val_groups=["99"])
    with pytest.raises(ValueError, match="val_fraction"):
        split_pairs(pairs, val_fraction=1.0)
    with pytest.raises(DataError, match="no training data"):
        split_pairs(pairs, val_groups=["1", "2", "3", "4", "5", "6"])
    one = [Pair(Path(f"/d/{i}.png"), group="seq") for i in range(4)]
    assert split_pairs(one, val_fraction=0.5) == (one, [])  # a sole group stays in training


def test_load_sample_size_mismatch(tmp_path: Path) -> None:
    image = write_rgb(tmp_path / "img.png", random_rgb(24, 32))
    mask = write_rgb(tmp_path / "msk.png", np.zeros((20, 32), np.uint8))
    with pytest.raises(DataError, match=r"msk\.png is 32x20.*img\.png is 32x24"):
        load_sample(Pair(image, mask))
    img, none = load_sample(Pair(image))
    assert none is None and img.shape == (24, 32, 3)


# ----------------------------------------------------------------------------- dataset


@pytest.fixture
def small_pairs(tmp_path: Path) -> list[Pair]:
    make_labelled(tmp_path, [f"s{i}" for i in range(4)], img_ext=".jpg")
    return find_pairs(tmp_path)[1]


def test_dataset_item_format(small_pairs: list[Pair]) -> None:
    ds = SegmentationDataset(small_pairs, size=16, augment=AugmentConfig())
    assert len(ds) == 4
    item = ds[1]
    assert set(item) == {"image", "mask", "index"} and item["index"] == 1
    image, mask = item["image"], item["mask"]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert mask.shape == (1, 16, 16) and mask.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.sum() > 0
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["index"].tolist() == [0, 1, 2, 3]


def test_dataset_reproducible(small_pairs: list[Pair]) -> None:
    a = SegmentationDataset(small_pairs, size=16, augment=AugmentConfig(), seed=5)
    b = SegmentationDataset(small_pairs, size=16, augment=AugmentConfig(), seed=5, cache=False)
    a.set_epoch(2)
    b.set_epoch(2)
    for i in range(len(a)):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["mask"], b[i]["mask"])
    first = [a[i]["image"] for i in range(4)]
    a.set_epoch(3)
    assert any(not torch.equal(x, a[i]["image"]) for i, x in enumerate(first))


def test_dataset_no_augment_matches_resize(small_pairs: list[Pair]) -> None:
    ds = SegmentationDataset(small_pairs, size=20, augment=AugmentConfig.none())
    image, mask = resize_pair(*load_sample(small_pairs[0]), 20)
    item = ds[0]
    np.testing.assert_array_equal((item["image"] * 255).round().byte().permute(1, 2, 0), image)
    np.testing.assert_array_equal(item["mask"][0].bool(), mask)


def test_dataset_cache_survives_file_removal(small_pairs: list[Pair]) -> None:
    ds = SegmentationDataset(small_pairs, size=16)
    ds.preload()
    before = ds[0]["image"]
    os.remove(small_pairs[0].image)
    assert torch.equal(ds[0]["image"], before)
    nocache = SegmentationDataset(small_pairs, size=16, cache=False)
    with pytest.raises(FileNotFoundError):
        nocache[0]


def test_dataset_errors(small_pairs: list[Pair], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no pairs"):
        SegmentationDataset([])
    with pytest.raises(ValueError, match="size"):
        SegmentationDataset(small_pairs, size=0)
    with pytest.raises(IndexError):
        SegmentationDataset(small_pairs, size=16)[4]


def test_dataset_epoch_reaches_persistent_workers(small_pairs: list[Pair]) -> None:
    ds = SegmentationDataset(small_pairs, size=16, augment=AugmentConfig(), seed=1)
    ds.preload()
    loader = torch.utils.data.DataLoader(
        ds, batch_size=2, num_workers=1, persistent_workers=True, shuffle=False
    )
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        got = torch.cat([b["image"] for b in loader])
        want = torch.stack([ds[i]["image"] for i in range(len(ds))])
        assert torch.equal(got, want)


# ----------------------------------------------------------------------------- real data

REAL = Path(os.environ.get("LSDSEG_DATA", "/work/shared/data"))


@pytest.mark.data
@pytest.mark.skipif(not REAL.is_dir(), reason="real datasets not available")
def test_real_datasets() -> None:
    layout, pairs = find_pairs(REAL / "cvc-clinicdb")
    assert layout == "cvc" and len(pairs) == 428
    train, val = split_pairs(pairs)
    assert not {p.group for p in train} & {p.group for p in val}
    image, mask = load_sample(pairs[0])
    assert image.shape == (288, 384, 3) and mask.shape == (288, 384) and mask.any()
    layout, pairs = find_pairs(REAL / "kvasir-seg")
    assert layout == "kvasir" and len(pairs) == 900 and all(p.mask for p in pairs)
    image, mask = load_sample(pairs[0])
    assert mask.shape == image.shape[:2] and 0.0 < mask.mean() < 1.0


def _png_header(width: int, height: int, colour: int = 0, depth: int = 8) -> bytes:
    """A PNG signature and IHDR declaring ``width x height``, then a token IDAT: enough for
    any reader to see the size (the pixels never come)."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(tag + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg_header(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3)
    sof += b"\x01\x11\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def _bmp_header(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + len(info), 0, 0, 54) + info


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("grey.png", _png_header(30000, 30000)),  # 875 KB of zeros decodes to 900 MB
        ("rgba16.png", _png_header(16000, 16000, colour=6, depth=16)),
        ("big.jpg", _jpeg_header(40000, 40000)),
        ("big.bmp", _bmp_header(20000, -20000)),  # top-down rows: a negative height
    ],
)
def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataError, match=r"decompression bombs.*--max-pixels"):
        read_image(path)
    with pytest.raises(DataError, match="decompression bombs"):
        read_mask(path)


def test_the_pixel_limit_can_be_raised_or_lowered(tmp_path, monkeypatch):
    rgb = random_rgb(40, 50)
    png = write_rgb(tmp_path / "a.png", rgb)
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, rgb, photometric="rgb")
    monkeypatch.setenv("LSDSEG_MAX_IMAGE_PIXELS", "1999")  # 40 x 50 = 2000 pixels
    for path in (png, tif):
        with pytest.raises(DataError, match="declares 50x40 pixels"):
            read_image(path)
    monkeypatch.setenv("LSDSEG_MAX_IMAGE_PIXELS", "2000")
    assert np.array_equal(read_image(png), rgb) and np.array_equal(read_image(tif), rgb)
    monkeypatch.setenv("LSDSEG_MAX_IMAGE_PIXELS", "1000")
    (tmp_path / "big.png").write_bytes(_png_header(2000, 2000))
    with pytest.raises(DataError, match="declares 2000x2000"):
        read_image(tmp_path / "big.png")
    monkeypatch.setenv("LSDSEG_MAX_IMAGE_PIXELS", "0")  # no limit: decoded, found truncated
    with pytest.raises(DataError, match="cannot decode"):
        read_image(tmp_path / "big.png")


def test_a_file_larger_than_any_image_within_the_limit_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setenv("LSDSEG_MAX_IMAGE_PIXELS", "1000")
    path = tmp_path / "sparse.png"
    with open(path, "wb") as f:  # a sparse file: a PNG signature, then a hole
        f.write(_png_header(10, 10))
        f.truncate(1000 * 8 + (1 << 20) + 1)
    read = []
    real_fromfile = np.fromfile
    monkeypatch.setattr(np, "fromfile", lambda *a, **k: read.append(a) or real_fromfile(*a, **k))
    with pytest.raises(DataError, match="larger than an image within the pixel limit"):
        read_image(path)
    assert read == []  # refused before a byte of it was loaded


def test_decoder_warnings_stay_off_stderr(tmp_path, capfd):
    def chunk(tag: bytes, body: bytes, crc: int | None = None) -> bytes:
        c = zlib.crc32(tag + body) if crc is None else crc
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", c & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + b"\x40" * 8 for _ in range(8))
    ihdr = struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"tEXt", b"a\x00b", crc=1)
    path = tmp_path / "bad-text-crc.png"  # libpng: "libpng warning: tEXt: CRC error"
    path.write_bytes(png + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    capfd.readouterr()
    assert read_image(path).shape == (8, 8, 3) and int(read_image(path)[0, 0, 0]) == 0x40
    assert capfd.readouterr().err == ""


def test_other_output_during_a_decode_is_passed_on(tmp_path, capfd):
    from lsdseg import imageio

    capfd.readouterr()
    with imageio._decoder_warnings(tmp_path / "x.png"):
        os.write(2, b"libpng warning: iCCP: known incorrect sRGB profile\n")
        os.write(2, b"a message of another thread\n")
    assert capfd.readouterr().err == "a message of another thread\n"
