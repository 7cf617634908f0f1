"""Write dimr/sampling/imagenet_classes.json: the 1000 ImageNet-1k classes in the standard order, with synonyms.

The names come from the WordNet lemmas that timm ships as package data (not typed by hand). The timm wheel is
downloaded with pip into a temporary folder and read as a zip; timm itself is never installed or imported.

    python scripts/make_imagenet_classes.py            # pip download timm, then write the asset
    python scripts/make_imagenet_classes.py --wheel timm-1.0.31-py3-none-any.whl
"""

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "dimr" / "sampling" / "imagenet_classes.json"
SYNSETS = "timm/data/_info/imagenet_synsets.txt"  # 1000 WordNet ids in class-index order
LEMMAS = "timm/data/_info/imagenet_synset_to_lemma.txt"  # "wnid<TAB>name, synonym, ..."


def download_timm_wheel(folder):
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "timm",
                    "-d", str(folder)], check=True)
    return next(Path(folder).glob("timm-*.whl"))


def read_classes(wheel):
    with zipfile.ZipFile(wheel) as zf:
        wnids = zf.read(SYNSETS).decode().split()
        lemmas = dict(line.split("\t", 1) for line in zf.read(LEMMAS).decode().splitlines() if line.strip())
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise SystemExit(f"{wheel}: expected 1000 distinct synsets in {SYNSETS}, found {len(wnids)}")
    classes = []
    for index, wnid in enumerate(wnids):
        names = [name.strip() for name in lemmas[wnid].split(",") if name.strip()]
        classes.append({"id": index, "wnid": wnid, "names": list(dict.fromkeys(names))})
    return classes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, help="a timm wheel already downloaded (default: pip download one)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_timm_wheel(tmp)
        classes = read_classes(wheel)
        source = wheel.name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # One class per line: small, and readable in a diff.
    lines = ",\n".join(json.dumps(c, ensure_ascii=False) for c in classes)
    source_line = json.dumps(f"WordNet lemmas from {source} ({SYNSETS}, {LEMMAS})")
    args.out.write_text(f'{{"source": {source_line},\n"classes": [\n{lines}\n]}}\n')
    print(f"wrote {len(classes)} classes to {args.out}")


if __name__ == "__main__":
    main()
