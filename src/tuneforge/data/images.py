"""Image classification rows: one image and one label per row (`data_config.task: image_classification`).

Three layouts give the rows:
- a folder with one subfolder per class (`pets/cat/1.jpg`, `pets/dog/7.png`: the torchvision `ImageFolder` and
  Hugging Face `imagefolder` layout); the subfolder names are the labels, files without an image extension are
  left out (and counted in a note);
- a CSV/JSON/JSONL file with an image-path column (`image_column`, paths relative to the data file or absolute);
- a Parquet file whose image column holds bytes, or the Hugging Face `datasets` Image feature's `{"bytes", "path"}`
  (also in a `save_to_disk` folder; a hub dataset streams decoded images, which are kept as PNG bytes).

The scan is classify.py's (label checks, the label set, per-class counts, small-class and imbalance warnings) with
the text checks replaced by image checks: every image is decoded once here, so a truncated or mislabelled file is
refused before training, named by its row and file. Examples keep a reference to the image (its path, or its bytes),
not its pixels: they are decoded again batch by batch in training (train/tasks.py), which keeps memory flat.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import did_you_mean
from .classify import ClassificationScan, label_key
from .report import DataIssue, plural
from .sources import Record, Source, SourceError

# What Hugging Face's `imagefolder` builder and torchvision's ImageFolder read as images (lower-case suffixes).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".ico", ".jfif"}
)
# Column types (Arrow names) that can hold an image: a path, encoded bytes, or datasets' Image struct.
_IMAGE_TYPES = ("string", "large_string", "binary", "large_binary", "struct<bytes: binary, path: string>")

ImageRef = str | bytes  # an image file's path, or an encoded image (PNG, JPEG, ...)


@dataclass(frozen=True, slots=True)
class ImageExample:
    """One image classification example: where the image is (a path, or its encoded bytes) and its label id."""

    image: ImageRef
    label: int

    def __len__(self) -> int:
        return 1  # the batcher groups by length; every image is resized to the processor's size

    @property
    def n_targets(self) -> int:
        return 1


def open_image(ref: ImageRef):
    """The image as a decoded RGB PIL image (greyscale, palette and RGBA images are converted, as the processors of
    ImageNet-trained models expect three channels). Raises OSError/ValueError for what cannot be decoded."""
    from PIL import Image

    with Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref) as im:
        im.load()  # decode every byte now: a truncated file fails here, not in the middle of training
        return im.convert("RGB")


def image_ref(value: Any, folder: Path | None) -> tuple[ImageRef | None, str]:
    """(the image reference of a cell, how to name it in messages), or (None, why not) for a cell that holds no
    image. A relative path is read from `folder` (the data file's folder)."""
    if hasattr(value, "getexif") and hasattr(value, "save"):  # a decoded PIL image: a streamed datasets Image value
        buf = io.BytesIO()
        value.save(buf, format="PNG")  # lossless, whatever the image was read from
        return buf.getvalue(), f"image ({value.format or 'decoded'}, {value.size[0]}x{value.size[1]})"
    if isinstance(value, dict) and ("bytes" in value or "path" in value):  # datasets' Image feature
        if value.get("bytes"):
            return bytes(value["bytes"]), f"image bytes ({value.get('path') or 'no path'})"
        value = value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), f"image bytes ({len(value):,} bytes)"
    if isinstance(value, str) and value.strip():
        path = Path(value.strip()).expanduser()
        if not path.is_absolute():
            if folder is None:
                return (
                    None,
                    f"relative image path {value!r} needs a local data file to be relative to; give an absolute path",
                )
            path = folder / path
        return str(path), f"file {str(path)!r}"
    return None, f"{type(value).__name__} value {_short(value)}, not an image path, image bytes or {{bytes, path}}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_class_folder(path: Path) -> bool:
    """A folder-per-class layout: a folder (not a saved `datasets` folder) with at least one subfolder."""
    return (
        path.is_dir()
        and not (path / "dataset_dict.json").is_file()
        and not (path / "state.json").is_file()
        and any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())
    )


def class_folder_source(folder: Path, *, image_column: str, label_column: str) -> Source:
    """The rows of a folder-per-class layout: {image_column: absolute path, label_column: subfolder name}, class by
    class in name order and file by file (subfolders of a class folder included) in path order, so rows are
    numbered the same way on every read."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    skipped: list[Path] = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    files: list[tuple[Path, str]] = []
    for cls in classes:
        for path in sorted(cls.rglob("*")):
            if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append((path, cls.name))
            else:
                skipped.append(path)
    name = folder.name or str(folder)
    if not files:
        raise SourceError(
            DataIssue(
                "source",
                f"{name}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in its class subfolders "
                f"({', '.join(c.name for c in classes[:5])}{', ...' * (len(classes) > 5)}); a folder-per-class "
                "dataset holds one subfolder per label with that label's images",
            )
        )

    def read() -> Iterator[Record]:
        for row, (path, label) in enumerate(files, start=1):
            yield Record(row, None, data={image_column: str(path), label_column: label})

    source = Source(
        name,
        "image_folder",
        read,
        detail=f"{len(classes)} class folders",
        schema={image_column: "string", label_column: "string"},
        folder=folder,
    )
    if skipped:
        shown = ", ".join(str(p.relative_to(folder)) for p in skipped[:3])
        source.notes.append(
            f"{plural(len(skipped), 'file')} without an image extension left out (e.g. {shown}); a class's images "
            "go in its subfolder"
        )
    return source


class ImageClassificationScan(ClassificationScan):
    """`ClassificationScan` with an image column instead of a text column: see the module docstring."""

    input_option = "image_column"
    format_name = "image_classification"
    input_kind = "not_image"

    def __init__(self, source: Source, report: Any, options: Any, *, tokenizer: Any, keep: bool):
        super().__init__(source, report, options, tokenizer=None, keep=keep)  # images need no tokenizer
        self.input_col = options.image_column
        self.sizes: list[tuple[int, int]] = []  # (width, height) of the decoded images, for the report's note
        self.modes: set[str] = set()

    def _column_problem(self, typ: str) -> str | None:
        if typ in _IMAGE_TYPES or typ.startswith("struct<bytes: binary"):
            return None
        return (
            f"column '{self.input_col}' holds {typ} values, not images (data_config.image_column must name a column "
            "of image paths, image bytes or datasets Image values)"
        )

    def _check_input(self, rec: Record) -> bool:
        data = rec.data
        assert data is not None
        if self.input_col not in data:
            self.missing[self.input_col] = self.missing.get(self.input_col, 0) + 1
            self._row_error(
                rec,
                "missing_field",
                f"no '{self.input_col}' {self.noun}{did_you_mean(self.input_col, list(data))}",
                self.input_col,
            )
            return False
        ref, named = image_ref(data[self.input_col], self.source.folder)
        if ref is None:
            self._row_error(rec, "not_image", f"'{self.input_col}' holds a {named}", self.input_col)
            return False
        if isinstance(ref, str) and not Path(ref).is_file():
            self._row_error(rec, "missing_image", f"image {named} does not exist", self.input_col)
            return False
        try:
            im = open_image(ref)
        except (OSError, ValueError, SyntaxError) as err:  # PIL: UnidentifiedImageError (an OSError), truncation,
            # decompression-bomb (ValueError subclass in recent Pillow), and SyntaxError from some damaged formats
            self._row_error(rec, "bad_image", f"{named} cannot be decoded as an image: {err}", self.input_col)
            return False
        self.sizes.append(im.size)
        self.modes.add(im.mode)
        return True

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        for rec in batch:
            data = rec.data
            assert data is not None
            key = label_key(data[self.label_col])
            assert key is not None
            ref, named = image_ref(data[self.input_col], self.source.folder)
            assert ref is not None
            self.report.n_trainable += 1
            if self.report.first_example is None:
                self.report.first_example = {
                    "line": rec.line,
                    "row": rec.row,
                    "tokenized": False,
                    "rendered": named,
                    "label": str(key),
                }
            if self.keep:
                self.held.append((rec, ref, key))

    def _example(self, ref: Any, label: int) -> ImageExample:
        return ImageExample(ref, label)

    def _finish(self) -> None:
        super()._finish()
        if self.sizes:
            widths = [w for w, _ in self.sizes]
            heights = [h for _, h in self.sizes]
            self.report.notes.append(
                f"images: {len(self.sizes):,} decoded, {min(widths)}-{max(widths)} pixels wide and "
                f"{min(heights)}-{max(heights)} high, modes {', '.join(sorted(self.modes))} (read as RGB); each is "
                "resized and normalised by the model's image processor"
            )
        self.sizes = []
