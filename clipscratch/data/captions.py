"""Reading image-caption files as they come, grouped by image.

    Flickr8k.token.txt   ``image.jpg#N<TAB>caption`` (Flickr8k, Flickr30k)
    captions.csv / .tsv  a header row naming an image column and a caption column
                         (``label`` and ``split`` columns optional); Flickr8k's ``captions.txt``
                         from Kaggle is such a CSV despite its name
    captions.jsonl       one object per line with the same keys (``img``/``text`` too, as the
                         Hateful Memes files have them)
    trainImages.txt      split lists: one image name per line (``read_image_list``)

Rows are grouped by image in the order images first appear: one record per image with all its
captions, so that whatever splits or shards them keeps one photo's captions together.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set

from ..errors import ClipscratchError

IMAGE_KEYS = ("image", "img", "file", "filepath", "filename", "path")
CAPTION_KEYS = ("caption", "text", "title", "sentence")
LABEL_KEYS = ("label", "class")
SPLIT_KEYS = ("split",)
_TOKEN_LINE = re.compile(r"^([^\t]+)#\d+\t(.*)$")  # image.jpg#3<TAB>caption


@dataclass
class ImageRecord:
    image: str  # path or name as written in the file
    captions: List[str] = field(default_factory=list)
    label: Optional[str] = None
    split: Optional[str] = None


def read_table(path: str) -> List[ImageRecord]:
    """One record per image of a caption file in any of the formats above."""
    if not os.path.isfile(path):
        raise ClipscratchError(f"{path}: captions file not found")
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        text = f.read()
    first = next((line for line in text.splitlines() if line.strip()), "")
    if path.endswith((".jsonl", ".json")):
        rows = _jsonl_rows(path, text)
    elif _TOKEN_LINE.match(first):
        rows = [{"image": m.group(1), "caption": m.group(2)} for m in map(_TOKEN_LINE.match, text.splitlines()) if m]
    else:
        delimiter = "\t" if path.endswith(".tsv") or ("\t" in first and "," not in first) else ","
        rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    return _group(rows, path)


def read_captions(path: str) -> Dict[str, List[str]]:
    """image -> its captions, in file order."""
    return {r.image: r.captions for r in read_table(path)}


def read_image_list(path: str) -> Set[str]:
    """The image names of a split list (one per line, e.g. Flickr_8k.trainImages.txt)."""
    if not os.path.isfile(path):
        raise ClipscratchError(f"{path}: image list not found")
    with open(path, encoding="utf-8") as f:
        names = {line.strip() for line in f if line.strip()}
    if not names:
        raise ClipscratchError(f"{path}: the image list is empty")
    return names


def _jsonl_rows(path: str, text: str) -> List[dict]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ClipscratchError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    return rows


def _column(row: dict, keys) -> Optional[str]:
    return next((k for k in keys if k in row), None)


def _group(rows: List[dict], path: str) -> List[ImageRecord]:
    if not rows:
        return []
    image_key = _column(rows[0], IMAGE_KEYS)
    if image_key is None:
        raise ClipscratchError(f"{path}: needs an image column ({'/'.join(IMAGE_KEYS)}); found {sorted(rows[0])}")
    caption_key, label_key, split_key = (_column(rows[0], keys) for keys in (CAPTION_KEYS, LABEL_KEYS, SPLIT_KEYS))
    records: Dict[str, ImageRecord] = {}
    for row in rows:
        image = str(row.get(image_key) or "").strip()
        if not image:
            continue
        record = records.setdefault(image, ImageRecord(image))
        caption = str(row.get(caption_key) or "").strip() if caption_key else ""
        if caption:
            record.captions.append(caption)
        for attr, key in (("label", label_key), ("split", split_key)):
            value = row.get(key) if key else None
            if value is None or str(value).strip() == "":
                continue
            value = str(value).strip()
            if getattr(record, attr) not in (None, value):
                raise ClipscratchError(f"{path}: image {image!r} has two {attr}s, {getattr(record, attr)!r} and {value!r}")
            setattr(record, attr, value)
    return list(records.values())
