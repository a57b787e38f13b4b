"""Shared machinery of the real datasets: label encodings, the paired dataset, split handling and checking.

Every real dataset is a list of ``(image file, label file, encoding)`` samples. What differs between
datasets is only how the list is found on disk and how raw label values become train ids; listing,
decoding, subset selection and the integrity check (pairing, sizes, truncation, label values) are written
once here so that every dataset reports problems the same way: the file, what was found, what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from benchmark.data.base import IGNORE_INDEX, CheckReport, DatasetError, DatasetSpec

#: One sample: image path, label path, index into the dataset's encodings.
Sample = tuple[str, str, int]

_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_END = b"\xff\xd9"


class LabelEncoding:
    """How raw values of a single-channel label file map to train ids.

    ``lut[raw]`` is the train id (or ``IGNORE_INDEX``); ``valid[raw]`` says whether a well-formed file
    may contain ``raw`` at all. A 256-entry lookup table maps a whole label image in one numpy indexing
    operation, which is what keeps ``__getitem__`` cheap at Cityscapes resolution.
    """

    def __init__(self, name: str, mapping: Mapping[int, int], expected: str):
        self.name = name
        self.expected = expected
        self.lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        self.valid = np.zeros(256, dtype=bool)
        for raw, train_id in mapping.items():
            self.lut[raw] = IGNORE_INDEX if train_id < 0 else train_id
            self.valid[raw] = True

    @classmethod
    def identity(cls, name: str, num_classes: int, expected: str) -> LabelEncoding:
        """Labels already in train ids: 0..K-1 plus the ignore value."""
        return cls(name, {**{i: i for i in range(num_classes)}, IGNORE_INDEX: IGNORE_INDEX}, expected)

    def __repr__(self) -> str:
        return f"<LabelEncoding {self.name}: {self.expected}>"


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Raw values of a single-channel (mode L or P) label PNG as ``uint8 [H, W]``.

    PIL is used rather than ``torchvision.io`` because a palette (mode P) PNG, as VOC ships, must give
    the palette *indices*, which are the class ids; libpng-based decoders expand it to RGB colours.
    """
    with Image.open(path) as label:
        if label.mode not in ("L", "P"):
            raise DatasetError(
                f"{path}: label image has mode {label.mode!r}, expected a single-channel index PNG (mode L or P)"
                + ("; it looks like a colour visualisation, not class ids" if label.mode in ("RGB", "RGBA") else "")
            )
        return np.asarray(label, dtype=np.uint8)


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """RGB ``uint8 [3, H, W]`` decoded by PIL (torchvision.io's decoders are deprecated since 0.29).

    The tensor is a channels-last view of PIL's HWC buffer, not a copy: torchvision's uint8 resize has a fast
    path for exactly that memory layout, and collation makes the batch contiguous anyway.
    """
    with Image.open(path) as image:
        array = np.array(image if image.mode == "RGB" else image.convert("RGB"))  # writable: torch wants that
    return torch.from_numpy(array).permute(2, 0, 1)


class PairedDataset(Dataset):
    """Raw ``(tv_tensors.Image uint8 [3,H,W], tv_tensors.Mask int64 [H,W])`` samples from image/label files.

    It holds only path strings and small lookup tables, so it pickles cheaply into DataLoader workers,
    where all decoding happens.
    """

    def __init__(self, samples: Sequence[Sample], encodings: Sequence[LabelEncoding], name: str = ""):
        self.samples = list(samples)
        self.encodings = tuple(encodings)
        self.name = name

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image_path, label_path, encoding = self.samples[index]
        try:
            image = read_image(image_path)
        except (OSError, SyntaxError, ValueError) as error:
            raise DatasetError(f"{image_path}: cannot decode image ({error})") from error
        try:
            raw = read_label(label_path)
        except (OSError, SyntaxError, ValueError) as error:
            raise DatasetError(f"{label_path}: cannot decode label ({error})") from error
        if tuple(raw.shape) != tuple(image.shape[-2:]):
            raise DatasetError(
                f"{label_path}: label is {raw.shape[1]}x{raw.shape[0]} but its image {image_path} is "
                f"{image.shape[2]}x{image.shape[1]} (width x height); they must match"
            )
        mask = torch.from_numpy(self.encodings[encoding].lut[raw]).long()
        return tv_tensors.Image(image), tv_tensors.Mask(mask)

    def __repr__(self) -> str:
        return f"<PairedDataset {self.name}: {len(self)} samples>"


# ---------------------------------------------------------------------------------------------------------------
# splits and subsets


def split_parts(spec: DatasetSpec, split: str) -> list[str]:
    """``"train+val"`` -> ``["train", "val"]``, each checked against the spec's splits."""
    parts = [part.strip() for part in split.split("+")]
    for part in parts:
        if part not in spec.splits:
            raise DatasetError(
                f"dataset {spec.name!r} has no split {part!r} (in {split!r}); "
                f"known splits: {', '.join(spec.splits)}; combine them with '+', e.g. {spec.splits[0]}+{spec.splits[-1]}"
            )
    if len(set(parts)) != len(parts):
        raise DatasetError(f"dataset {spec.name!r}: split {split!r} names a split twice")
    return parts


def take_subset(samples: list[Sample], subset: int | None) -> list[Sample]:
    """The first ``subset`` samples in sorted image-path order: deterministic and the same on every machine."""
    samples = sorted(samples)
    if subset is None:
        return samples
    if isinstance(subset, bool) or not isinstance(subset, int) or subset < 1:
        raise DatasetError(f"option subset={subset!r}: expected a positive integer or None")
    return samples[:subset]


def required_splits(spec: DatasetSpec) -> list[str]:
    """The splits a suite uses by default: training, evaluation and (where there is one) selection."""
    names: list[str] = []
    for split in (spec.train_split, spec.eval_split, spec.selection_split):
        if split:
            names += [part for part in split.split("+") if part not in names]
    return names


# ---------------------------------------------------------------------------------------------------------------
# checking


@dataclass
class SplitScan:
    """What checking one split found: the pairs, the problems and the label values seen."""

    split: str
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: entries a list file names whose files are absent: problems, unless the dataset is used ``partial``
    missing: list[str] = field(default_factory=list)
    #: raw label values present in the files (as stored on disk)
    raw_values: set[int] = field(default_factory=set)
    #: train ids present after mapping (0..K-1 and IGNORE_INDEX)
    train_values: set[int] = field(default_factory=set)


def format_values(values: Iterable[int]) -> str:
    """``[0, 1, 2, 3, 7, 255]`` -> ``"0-3, 7, 255"``: short enough for a one-line message."""
    values = sorted(values)
    runs: list[str] = []
    start = prev = None
    for value in values + [None]:
        if start is not None and (value is None or value != prev + 1):
            runs.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if value is not None and start is None:
            start = value
        prev = value
    return ", ".join(runs)


def _tail_ok(path: str) -> str | None:
    """Cheap truncation test: a complete PNG ends with its IEND chunk, a complete JPEG with the EOI marker.

    Reading the last bytes costs one seek, so every image can be checked before every run; an interrupted
    download or unzip is by far the most common damage and always cuts the end of a file.
    """
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 64))
        tail = handle.read()
    suffix = Path(path).suffix.lower()
    if suffix == ".png" and not tail.endswith(_PNG_END):
        return "truncated PNG (the file does not end with the IEND chunk)"
    if suffix in (".jpg", ".jpeg") and _JPEG_END not in tail:  # some encoders pad a few bytes after EOI
        return "truncated JPEG (no end-of-image marker at the end of the file)"
    return None


def _check_sample(
    sample: Sample,
    encodings: Sequence[LabelEncoding],
    expected_size: tuple[int, int] | None,
    scan_labels: bool,
    deep: bool,
) -> tuple[list[str], np.ndarray | None]:
    image_path, label_path, encoding_index = sample
    encoding = encodings[encoding_index]
    problems: list[str] = []
    image_size = None
    try:
        damage = _tail_ok(image_path)
        if damage:
            problems.append(f"{image_path}: {damage}")
        with Image.open(image_path) as image:
            image_size = image.size
            if deep and not damage:
                image.draft("RGB", (image.width // 8, image.height // 8))  # JPEG: decode at 1/8 scale, same bytes read
                image.load()
    except (OSError, SyntaxError, ValueError) as error:
        problems.append(f"{image_path}: cannot read image ({error})")
    if image_size is not None and expected_size is not None and image_size != expected_size:
        problems.append(
            f"{image_path}: image is {image_size[0]}x{image_size[1]}, expected {expected_size[0]}x{expected_size[1]}"
            " (width x height)"
        )
    histogram = None
    try:
        damage = _tail_ok(label_path)
        if damage:
            problems.append(f"{label_path}: {damage}")
            return problems, None
        with Image.open(label_path) as label:
            if label.mode not in ("L", "P"):
                problems.append(
                    f"{label_path}: label image has mode {label.mode!r}, expected a single-channel index PNG "
                    f"(mode L or P) holding {encoding.expected}"
                )
                return problems, None
            if image_size is not None and label.size != image_size:
                problems.append(
                    f"{label_path}: label is {label.size[0]}x{label.size[1]} but its image {image_path} is "
                    f"{image_size[0]}x{image_size[1]} (width x height)"
                )
            if scan_labels:
                raw = np.asarray(label, dtype=np.uint8)
                histogram = np.bincount(raw.ravel(), minlength=256)
    except (OSError, SyntaxError, ValueError) as error:
        problems.append(f"{label_path}: cannot decode label ({error})")
        return problems, None
    if histogram is not None:
        bad = np.flatnonzero((histogram > 0) & ~encoding.valid)
        if bad.size:
            problems.append(
                f"{label_path}: label value(s) {format_values(bad.tolist())} not allowed; expected {encoding.expected}"
            )
    return problems, histogram


def check_samples(
    scan: SplitScan,
    encodings: Sequence[LabelEncoding],
    *,
    expected_size: tuple[int, int] | None = None,
    scan_labels: bool = True,
    deep: bool = False,
    workers: int | None = None,
) -> SplitScan:
    """Check every pair of ``scan.samples``: readable, not truncated, sizes matching, label values allowed.

    ``expected_size`` is (width, height). Labels are decoded in full (that is the only way to see their
    values); images are checked by header and file end, or fully decoded with ``deep``. Decoding runs in a
    thread pool because PIL's decoders and zlib release the GIL.
    """
    workers = workers or min(8, os.cpu_count() or 1)

    def one(sample: Sample):
        return _check_sample(sample, encodings, expected_size, scan_labels, deep)

    if workers > 1 and len(scan.samples) > 1:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(one, scan.samples))
    else:
        results = [one(sample) for sample in scan.samples]
    for (_, _, encoding_index), (problems, histogram) in zip(scan.samples, results):
        scan.problems += problems
        if histogram is not None:
            present = np.flatnonzero(histogram)
            scan.raw_values.update(present.tolist())
            scan.train_values.update(np.unique(encodings[encoding_index].lut[present]).tolist())
    return scan


def pair_by_stem(
    images: Mapping[str, Path],
    labels: Mapping[str, Path],
    *,
    image_pattern: str,
    label_pattern: str,
    scan: SplitScan,
    encoding: int | Callable[[Path], int] = 0,
) -> None:
    """Pair image and label files that share a key; report every image without a label and vice versa.

    The patterns (with ``<name>`` standing for the key) go into the messages so that the user sees the
    exact path that was expected.
    """
    for key in sorted(images.keys() - labels.keys()):
        scan.problems.append(f"{images[key]} has no label: expected {label_pattern.replace('<name>', key)}")
    for key in sorted(labels.keys() - images.keys()):
        scan.problems.append(f"{labels[key]} has no image: expected {image_pattern.replace('<name>', key)}")
    for key in sorted(images.keys() & labels.keys()):
        label = labels[key]
        scan.samples.append((str(images[key]), str(label), encoding(label) if callable(encoding) else encoding))


def check_counts(scan: SplitScan, expected: int | None, subset: int | None, partial: bool, what: str) -> None:
    """Compare the number of pairs with the official split size; a short split is a problem unless ``partial``."""
    found = len(scan.samples)
    if found == 0:
        return  # the lister already said what is missing, with the expected pattern
    if partial or expected is None:
        return
    if subset is not None:
        if found < min(subset, expected):
            scan.problems.append(f"{what}: found {found} pairs, fewer than subset={subset}")
        return
    if found != expected:
        scan.problems.append(
            f"{what}: found {found} image/label pairs, expected {expected} (the official split); the copy is "
            "incomplete or has extra files (set the dataset option partial: true to use it anyway)"
        )


def build_report(name: str, root: Path | None, scans: Iterable[SplitScan]) -> CheckReport:
    report = CheckReport(dataset=name, root=str(Path(root).expanduser().resolve()) if root is not None else None)
    for scan in scans:
        report.counts[scan.split] = len(scan.samples)
        report.problems += [f"{scan.split}: {problem}" for problem in scan.problems]
    return report


class RealDatasetSpec(DatasetSpec):
    """Common behaviour of the datasets read from files: splits, subset, checking, building.

    A subclass sets the attributes and implements :meth:`list_split` (find the pairs of one split and report
    what is missing); everything else is shared.
    """

    encodings: tuple[LabelEncoding, ...]
    #: official number of pairs per split (None: no fixed size)
    expected_counts: Mapping[str, int] = MappingProxyType({})
    #: (width, height) every image of the dataset has, or None where sizes vary
    image_size: tuple[int, int] | None = None
    #: how to obtain and lay out the dataset; appended to failed checks
    help: str = ""

    def options(self) -> dict[str, Any]:
        return {"subset": None, "partial": False}

    def list_split(self, split: str, root: Path) -> SplitScan:
        raise NotImplementedError

    def resolve_root(self, root: Path | str | None) -> Path:
        if root is None:
            raise DatasetError(
                f"dataset {self.name!r} needs a root directory (`dataset.root` in a suite, `--root DIR` for "
                f"`data check`)\n{self.help}"
            )
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            raise DatasetError(f"dataset {self.name!r}: root {root} is not a directory (set it with `dataset.root` in "
                               f"a suite, `--root DIR` for `data check`)\n{self.help}")
        return root

    def build(self, split: str, root: Path | None, subset: int | None = None, partial: bool = False, **options: Any):
        if options:
            raise DatasetError(
                f"dataset {self.name!r}: unknown option(s) {sorted(options)}; known: {sorted(self.options())}"
            )
        parts = split_parts(self, split)
        root = self.resolve_root(root)
        samples: list[Sample] = []
        for part in parts:
            scan = self.list_split(part, root)
            if not partial:
                scan.problems += scan.missing
            if not scan.samples:
                raise DatasetError(
                    f"dataset {self.name!r} split {part!r} at {root}: no image/label pairs found; "
                    + "; ".join(scan.problems[:3])
                    + f"\n{self.help}"
                )
            if scan.problems:  # pairing problems: refuse to train on a silently different split
                more = f" (and {len(scan.problems) - 3} more)" if len(scan.problems) > 3 else ""
                raise DatasetError(
                    f"dataset {self.name!r} split {part!r} at {root}: "
                    + "; ".join(scan.problems[:3])
                    + more
                    + f"; run `python -m benchmark data check {self.name} --root {root}` for the full list"
                )
            samples += take_subset(scan.samples, subset)
        return PairedDataset(samples, self.encodings, name=f"{self.name}:{split}")

    def scan(
        self,
        root: Path | None,
        *,
        splits: Sequence[str] | None = None,
        subset: int | None = None,
        partial: bool = False,
        scan_labels: bool = True,
        deep: bool = False,
        workers: int | None = None,
    ) -> list[SplitScan]:
        """List and check the given splits (default: those the suite uses); see :func:`check_samples`."""
        parts: list[str] = []
        for split in splits or required_splits(self):
            parts += [part for part in split_parts(self, split) if part not in parts]
        try:
            root = self.resolve_root(root)
        except DatasetError as error:
            return [SplitScan(split=parts[0], problems=[str(error).splitlines()[0]])] + [
                SplitScan(split=p) for p in parts[1:]
            ]
        scans = []
        for part in parts:
            scan = self.list_split(part, root)
            if not partial:
                scan.problems += scan.missing
            scan.samples = take_subset(scan.samples, subset)
            check_counts(scan, self.expected_counts.get(part), subset, partial, f"{self.name} {part} at {root}")
            check_samples(
                scan, self.encodings, expected_size=self.image_size, scan_labels=scan_labels, deep=deep, workers=workers
            )
            scans.append(scan)
        return scans

    def check(self, root: Path | None, **options: Any) -> CheckReport:
        """Count pairs per split and check pairing, truncation, sizes and label values (see :meth:`scan`)."""
        known = {"splits", "subset", "partial", "scan_labels", "deep", "workers"}
        if set(options) - known:
            raise DatasetError(
                f"dataset {self.name!r}: unknown check option(s) {sorted(set(options) - known)}; known: {sorted(known)}"
            )
        report = build_report(self.name, root, self.scan(root, **options))
        if not report.ok and self.help:
            report.problems.append(f"how to get and lay out {self.name}:\n{self.help}")
        return report


# ---------------------------------------------------------------------------------------------------------------
# downloads (for `data prepare --download`)


def fetch_archive(url: str, dest: Path, *, what: str, strip: str = "", timeout: float = 30.0) -> None:
    """Download a .tar/.tar.gz/.tgz from ``url`` and extract it into ``dest``.

    ``strip``, if given, keeps only members under that prefix and removes it (e.g. one folder of a GitHub
    archive). Extraction uses tarfile's ``data`` filter, which refuses absolute paths, links out of ``dest``
    and device files. Any network failure becomes a :class:`DatasetError` that names the URL and the reason,
    so an offline machine gets one clear line instead of a traceback.
    """
    import tarfile
    import urllib.error
    import urllib.request

    dest.mkdir(parents=True, exist_ok=True)
    part = dest / (Path(url).name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as error:
        part.unlink(missing_ok=True)
        reason = getattr(error, "reason", error)
        raise DatasetError(
            f"could not download {what} from {url}: {reason}. If this machine is offline, download that file "
            f"elsewhere and unpack it into {dest} by hand."
        ) from error
    try:
        with tarfile.open(part) as archive:
            members = []
            for member in archive.getmembers():
                if strip:
                    if not member.name.startswith(strip.rstrip("/") + "/"):
                        continue
                    member.name = member.name[len(strip.rstrip("/")) + 1 :]
                    if not member.name:
                        continue
                members.append(member)
            archive.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError) as error:
        raise DatasetError(f"could not unpack {what} downloaded from {url} into {dest}: {error}") from error
    finally:
        part.unlink(missing_ok=True)
