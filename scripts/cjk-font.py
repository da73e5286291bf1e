#!/usr/bin/env python3
"""Cuts the CJK font the zh-CN figures use (flowers_kit/fonts/NotoSansSC-flowers.otf) from
Debian's Noto Sans CJK SC (package fonts-noto-cjk, SIL Open Font License 1.1) with fonttools.

Kept: ASCII and Latin-1 punctuation, general punctuation, CJK symbols and punctuation,
full-width forms, the 3,500 characters of level 1 of the Table of General Standard Chinese
Characters (flowers_kit/fonts/tgscc-level1.txt), and every CJK character of the figures' own
texts (flowers_kit/src/plot/language.rs), so that nothing the kit draws, and nearly nothing a
learner writes, shows a missing-glyph box. Hinting is dropped (the charts are rasterised by
ab_glyph, which ignores it).

Run once, by hand, on a machine with fonts-noto-cjk and fonttools:
    python3 scripts/cjk-font.py
"""
import pathlib
import sys

from fontTools import subset
from fontTools.ttLib import TTCollection

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = pathlib.Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
OUT = ROOT / "flowers_kit" / "fonts" / "NotoSansSC-flowers.otf"


def characters():
    level1 = "".join(
        line.strip()
        for line in (ROOT / "flowers_kit" / "fonts" / "tgscc-level1.txt").read_text("utf8").splitlines()
        if line and not line.startswith("#")
    )
    assert len(level1) == 3500, len(level1)
    texts = (ROOT / "flowers_kit" / "src" / "plot" / "language.rs").read_text("utf8")
    own = {c for c in texts if ord(c) >= 0x2E80}
    ranges = [(0x20, 0x7E), (0xA0, 0xFF), (0x2010, 0x2027), (0x2030, 0x205E), (0x3000, 0x303F), (0xFF01, 0xFF5E)]
    ascii_and_punctuation = {chr(c) for lo, hi in ranges for c in range(lo, hi + 1)}
    return set(level1) | own | ascii_and_punctuation


def main():
    collection = TTCollection(str(SOURCE))
    font = next(f for f in collection.fonts if f["name"].getDebugName(4) == "Noto Sans CJK SC")
    wanted = characters()
    options = subset.Options()
    options.hinting = False
    options.name_IDs = ["*"]
    options.name_languages = ["*"]
    options.layout_features = ["*"]
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=[ord(c) for c in wanted])
    subsetter.subset(font)
    font.save(str(OUT))
    missing = [c for c in wanted if ord(c) not in font.getBestCmap()]
    print(f"{OUT}: {OUT.stat().st_size} bytes, {len(wanted)} characters, {len(missing)} without a glyph")
    return 1 if any(ord(c) >= 0x4E00 for c in missing) else 0


if __name__ == "__main__":
    sys.exit(main())
