#!/usr/bin/env python3
"""Writes the seed corpus of the `parse` fuzz target from the independent test vectors.

Each vector gives three seeds, one per way the target reads its input: the signature text,
the decoded bytes (tag ++ original), and the original alone.

    python3 fuzz/make_seeds.py      # from the repository root
"""

import base64
import hashlib
import json
import pathlib

root = pathlib.Path(__file__).resolve().parent.parent
vectors = json.loads((root / "tests/vectors/tencent_vectors.json").read_text(encoding="utf-8"))
out = root / "fuzz/seeds/parse"
out.mkdir(parents=True, exist_ok=True)
for v in vectors["sign"] + vectors["parse_only"]:
    for kind, data in [
        ("text", v["signature"].encode("ascii")),
        ("raw", base64.b64decode(v["signature"])),
        ("original", v["original"].encode("utf-8")),
    ]:
        name = f"{v['name']}-{kind}-{hashlib.sha1(data).hexdigest()[:8]}"
        (out / name).write_bytes(data)
