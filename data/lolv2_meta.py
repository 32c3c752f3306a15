"""LOL-v2-synthetic pair lists for ``task: lle`` (Table 9): check a local copy's layout and write its meta lists.

    python data/lolv2_meta.py --root datasets/LOL-v2 [--out data/meta]

LOL-v2 (Yang et al., "Sparse gradient regularized deep Retinex network", TIP 2021; download from
https://github.com/flyywh/CVPR-2020-Semi-Low-Light) ships, as GSAD's and Reti-Diff's loaders read it::

    LOL-v2/Synthetic/Train/Low/*.png     LOL-v2/Synthetic/Train/Normal/*.png     (900 pairs)
    LOL-v2/Synthetic/Test/Low/*.png      LOL-v2/Synthetic/Test/Normal/*.png      (100 pairs)

(some copies name the folder ``LOLv2``, or nest the split one level deeper; ``--root`` may point at the folder holding
``Synthetic`` or at ``Synthetic`` itself). A Low and a Normal image pair by file name (GSAD pairs the sorted lists by
position, which is the same for this layout; a name present on one side only is an error here). Writes
``lolv2_syn_train.txt`` and ``lolv2_syn_test.txt`` — one ``LOW NORMAL`` line per pair, paths relative to the list —
for ``data.train_pair_meta`` / ``data.test_pair_meta``. The counts are checked (900 / 100; ``--any-count`` skips the
check for a subset). The data set itself cannot be fetched here: the lists are made from your copy.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXPECTED = {"Train": 900, "Test": 100}
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def synthetic_root(root: Path) -> Path:
    for candidate in (root / "Synthetic", root):
        if (candidate / "Train" / "Low").is_dir() and (candidate / "Test" / "Low").is_dir():
            return candidate
    raise SystemExit(f"lolv2_meta: no Synthetic/{{Train,Test}}/{{Low,Normal}} under '{root}'")


def pairs(split_dir: Path) -> list[tuple[Path, Path]]:
    low = {p.name: p for p in (split_dir / "Low").iterdir() if p.suffix.lower() in EXTENSIONS}
    normal = {p.name: p for p in (split_dir / "Normal").iterdir() if p.suffix.lower() in EXTENSIONS}
    only = sorted(set(low) ^ set(normal))
    if only:
        raise SystemExit(f"lolv2_meta: {len(only)} file(s) of '{split_dir}' have no partner, e.g. {only[0]}")
    return [(low[n], normal[n]) for n in sorted(low)]


def write_list(items: list[tuple[Path, Path]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rel = lambda p: os.path.relpath(p, path.parent)  # noqa: E731
    path.write_text("".join(f"{rel(a)} {rel(b)}\n" for a, b in items), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="the LOL-v2 folder (holding Synthetic/) or Synthetic/")
    p.add_argument("--out", type=Path, default=Path("data/meta"))
    p.add_argument("--any-count", action="store_true", help="accept other counts than 900 / 100 (a subset)")
    a = p.parse_args(argv)
    root = synthetic_root(a.root)
    for split, name in (("Train", "lolv2_syn_train.txt"), ("Test", "lolv2_syn_test.txt")):
        items = pairs(root / split)
        if not a.any_count and len(items) != EXPECTED[split]:
            raise SystemExit(f"lolv2_meta: {split} has {len(items)} pairs, LOL-v2-synthetic has {EXPECTED[split]} "
                             f"(--any-count for a subset)")
        write_list(items, a.out / name)
        print(f"{a.out / name}: {len(items)} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
