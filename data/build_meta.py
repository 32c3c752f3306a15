"""Build the training meta list as OSEDiff trains (LSDIR + the first 10k FFHQ images) and check it against test sets.

    python data/build_meta.py --lsdir /datasets/LSDIR/HR --ffhq /datasets/FFHQ/images1024x1024 \\
        --test /datasets/StableSR_testsets/RealSRVal_crop128 /datasets/StableSR_testsets/DrealSRVal_crop128 \\
               /datasets/StableSR_testsets/DIV2K_V2_val \\
        --out data/meta/train_hr.txt
    python data/build_meta.py --check data/meta/train_hr.txt --test /datasets/StableSR_testsets/RealSRVal_crop128

The list holds one absolute path per line (``#`` lines are comments), the format ``data.train_meta`` reads. FFHQ's
"first 10k" are the first ``--ffhq-count`` files in sorted path order (00000.png … 09999.png, in its nested folders
too). Every test image (all images below each ``--test`` folder: HR and LR) and every training image is decoded
as the data module decodes it (``ctsr.data.images.read_image``: EXIF orientation, RGB) and hashed by its pixels
(SHA-256 of the size and the 8-bit RGB values), so a copy under another name or in another file format is found;
a crop, a resize or a lossy re-encode is not. A training image whose pixels equal a test image's is reported
(``duplicate: TRAIN = TEST``); the run then exits with status 1 and writes nothing, unless ``--drop-duplicates``
writes the list without them. Unreadable files are reported and left out.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ctsr.data.datasets import read_meta_file
from ctsr.data.images import UnreadableImage, list_images, read_image

FFHQ_COUNT = 10_000  # OSEDiff's README: "LSDIR (84991) and the first 10k images from FFHQ"


class BuildError(Exception):
    """A bad argument: printed as one line, exit status 2."""


def pixel_hash(path: str | Path) -> str | None:
    """SHA-256 of the decoded 8-bit RGB pixels and the size, or None if the file cannot be decoded."""
    try:
        x = read_image(path)
    except UnreadableImage:
        return None
    pixels = (x * 255).round().clamp(0, 255).byte().permute(1, 2, 0).contiguous().numpy()
    digest = hashlib.sha256(f"{pixels.shape[0]}x{pixels.shape[1]}:".encode())
    digest.update(pixels.tobytes())
    return digest.hexdigest()


def _hashes(paths: list[Path], jobs: int) -> list[str | None]:
    if jobs <= 1 or len(paths) < 64:
        return [pixel_hash(p) for p in paths]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(pixel_hash, paths, chunksize=32))


def _folder_images(folder: str, flag: str) -> list[Path]:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise BuildError(f"{flag}: folder '{folder}' does not exist")
    found = list_images(root)
    if not found:
        raise BuildError(f"{flag}: folder '{folder}' holds no images")
    return [p.resolve() for p in found]


def training_files(lsdir: list[str], ffhq: str | None, ffhq_count: int, extra: list[str]) -> list[Path]:
    """LSDIR (all images), FFHQ's first ``ffhq_count`` in sorted path order, any extra folders; in that order."""
    files = [p for d in lsdir for p in _folder_images(d, "--lsdir")]
    if ffhq:
        faces = _folder_images(ffhq, "--ffhq")
        if len(faces) < ffhq_count:
            print(f"note: --ffhq '{ffhq}' holds {len(faces)} images, fewer than --ffhq-count {ffhq_count}",
                  file=sys.stderr)  # fmt: skip
        files += faces[:ffhq_count]
    files += [p for d in extra for p in _folder_images(d, "--extra")]
    return files


def find_duplicates(train: list[Path], tests: list[str], jobs: int = 1) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(training file, test file) pairs with equal pixels, and the training files that could not be decoded."""
    test_files = [p for d in tests for p in _folder_images(d, "--test")]
    test_by_hash: dict[str, Path] = {}
    for path, h in zip(test_files, _hashes(test_files, jobs)):
        if h is not None:
            test_by_hash.setdefault(h, path)
    duplicates, unreadable = [], []
    for path, h in zip(train, _hashes(train, jobs)):
        if h is None:
            unreadable.append(path)
        elif h in test_by_hash:
            duplicates.append((path, test_by_hash[h]))
    return duplicates, unreadable


def write_list(files: list[Path], out: Path, header: list[str]) -> None:
    bad = next((p for p in files if "#" in str(p) or any(c.isspace() for c in str(p))), None)
    if bad is not None:  # the meta-list format ends a path at whitespace or '#'
        raise BuildError(f"'{bad}' has a space or '#' in its path, which a meta list cannot hold; rename it")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"# {line}\n" for line in header) + "".join(f"{p}\n" for p in files))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="build_meta.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lsdir", nargs="*", default=[], help="LSDIR HR folder(s); all images are used")
    parser.add_argument("--ffhq", help="FFHQ folder; its first --ffhq-count images (sorted paths) are used")
    parser.add_argument("--ffhq-count", type=int, default=FFHQ_COUNT, help=f"default {FFHQ_COUNT} (OSEDiff)")
    parser.add_argument("--extra", nargs="*", default=[], help="further HR folders to include (all images)")
    parser.add_argument("--test", nargs="+", required=True, help="test-set folders (all images below each)")
    parser.add_argument("--out", help="the meta list to write")
    parser.add_argument("--check", help="check an existing meta list instead of building one")
    parser.add_argument("--drop-duplicates", action="store_true", help="write the list without the duplicates")
    parser.add_argument("--jobs", type=int, default=1, help="decoding processes")
    args = parser.parse_args(argv)
    try:
        if args.check:
            if not Path(args.check).is_file():
                raise BuildError(f"--check: '{args.check}' does not exist")
            train = [p.resolve() for p in read_meta_file(args.check)]
        else:
            if not args.out:
                raise BuildError("--out: give the meta list to write (or --check LIST)")
            if args.ffhq_count < 0:
                raise BuildError(f"--ffhq-count: must be ≥ 0, got {args.ffhq_count}")
            if not (args.lsdir or args.ffhq or args.extra):
                raise BuildError("no training folders (give --lsdir, --ffhq and/or --extra)")
            train = training_files(args.lsdir, args.ffhq, args.ffhq_count, args.extra)
        duplicates, unreadable = find_duplicates(train, args.test, args.jobs)
    except BuildError as err:
        print(f"build_meta.py: error: {err}", file=sys.stderr)
        return 2
    for path in unreadable:
        print(f"unreadable (left out): {path}", file=sys.stderr)
    for path, test in duplicates:
        print(f"duplicate: {path} = {test}")
    dropped = {p for p, _ in duplicates} | set(unreadable)
    kept = [p for p in train if p not in dropped]
    print(f"{len(train)} training images, {len(duplicates)} equal to a test image, {len(unreadable)} unreadable")
    if args.check:
        return 1 if duplicates else 0
    if duplicates and not args.drop_duplicates:
        print("nothing written: remove the duplicates or pass --drop-duplicates", file=sys.stderr)
        return 1
    header = [f"built by data/build_meta.py: lsdir={args.lsdir} ffhq={args.ffhq} (first {args.ffhq_count}) "
              f"extra={args.extra}", f"checked against {args.test}: {len(duplicates)} duplicates dropped"]  # fmt: skip
    try:
        write_list(kept, Path(args.out), header)
    except BuildError as err:
        print(f"build_meta.py: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(kept)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
