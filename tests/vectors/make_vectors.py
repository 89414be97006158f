#!/usr/bin/env python3
"""Independent test vectors for the Tencent Cloud VOD client-upload signature.

Implements Tencent's published algorithm (the Node.js / Python samples of "client upload
signatures") with the Python standard library only, and none of vod-signer's code:

    original  = "secretId=" ID "&currentTimeStamp=" T "&expireTime=" E "&random=" R ("&" name "=" value)*
    signature = base64( HMAC-SHA1(SecretKey, original) ++ original )

Values are encoded like JavaScript's encodeURIComponent, i.e. urllib.parse.quote with
safe="-_.!~*'()" (quote never leaves "/" out when safe does not name it).

Two kinds of vectors:

- "sign": parameters in vod-signer's fixed order (the four required ones, oneTimeValid,
  classId, procedure, taskPriority, taskNotifyMode, sourceContext, sessionContext,
  vodSubAppId, storageRegion, maxFileSize). vod-signer must reproduce them byte for byte.
- "parse_only": what another issuer may send: its own parameter order, unknown parameters,
  "+" for spaces and lower-case escapes. vod-signer must parse and verify them.

Regenerate (from the repository root):

    python3 tests/vectors/make_vectors.py > tests/vectors/tencent_vectors.json
"""

import base64
import hashlib
import hmac
import json
import re
import sys
from urllib.parse import quote

# vod-signer's fixed order of the optional parameters, with the JSON field naming them.
OPTIONAL = [
    ("classId", "class_id"),
    ("procedure", "procedure"),
    ("taskPriority", "task_priority"),
    ("taskNotifyMode", "task_notify_mode"),
    ("sourceContext", "source_context"),
    ("sessionContext", "session_context"),
    ("vodSubAppId", "vod_sub_app_id"),
    ("storageRegion", "storage_region"),
    ("maxFileSize", "max_file_size"),
]


def encode_uri_component(value):
    return quote(str(value), safe="-_.!~*'()", encoding="utf-8")


def sign(secret_key, original):
    tag = hmac.new(secret_key.encode("utf-8"), original.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(tag + original.encode("utf-8")).decode("ascii")


def vod_signer_order(v):
    pairs = [
        ("secretId", v["secret_id"]),
        ("currentTimeStamp", v["current_time_stamp"]),
        ("expireTime", v["expire_time"]),
        ("random", v["random"]),
    ]
    if v["one_time_valid"]:
        pairs.append(("oneTimeValid", 1))
    for name, field in OPTIONAL:
        if field in v["policy"]:
            pairs.append((name, v["policy"][field]))
    return pairs


def build(v, pairs=None, encode=encode_uri_component):
    pairs = pairs if pairs is not None else vod_signer_order(v)
    original = "&".join(f"{name}={encode(value)}" for name, value in pairs)
    v["original"] = original
    v["signature"] = sign(v["secret_key"], original)
    return v


def base(name, **kw):
    v = {
        "name": name,
        "secret_key": "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
        "secret_id": "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE",
        "current_time_stamp": 1700000000,
        "expire_time": 1700003600,
        "random": 3141592653,
        "one_time_valid": True,
        "policy": {},
        "extra": {},
    }
    v.update(kw)
    return v


def sign_vectors():
    return [
        # SPEC section 2's example.
        base(
            "spec_example",
            policy={"procedure": "QCVB_SimpleProcessFile", "source_context": "user-42/上传 #1"},
        ),
        base("required_only", one_time_valid=False, random=0,
             current_time_stamp=0, expire_time=1),
        base("one_time_only", secret_id="k", secret_key="k", random=4294967295,
             expire_time=1700000000 + 7776000),
        base(
            "every_parameter",
            secret_id="AKID_rotation-2026",
            secret_key="another secret key with spaces & symbols %+/=",
            policy={
                "class_id": 18446744073709551615,
                "procedure": "LongVideoPreset",
                "task_priority": -10,
                "task_notify_mode": "Finish",
                "source_context": "order=42&user=7",
                "session_context": '{"a":[1,2],"b":"c d"}',
                "vod_sub_app_id": 1500000001,
                "storage_region": "ap-chongqing",
                "max_file_size": 5368709120,
            },
        ),
        base(
            "unreserved_and_reserved",
            policy={
                "procedure": "A-Z_a.z~0!9*'()",
                "source_context": " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
                "task_priority": 10,
                "task_notify_mode": "Change",
            },
        ),
        base(
            "unicode",
            secret_key="密钥-ключ-🔑",
            policy={
                "procedure": "转码 流程",
                "source_context": "Grüße, 世界! 🎬🎞️ naïve café",
                "session_context": "Ünïcödé ∑ ∫ ≠ ∞ · 日本語テキスト · עברית · العربية",
                "storage_region": "ap-shanghai",
                "task_notify_mode": "None",
                "task_priority": 0,
            },
        ),
        base(
            "spaces_and_controls",
            policy={
                "source_context": "  leading and trailing  \t\n\r",
                "session_context": "line1\nline2\u0000nul\u007fdel",
            },
        ),
        base(
            "context_limits",
            policy={
                # 250 bytes of 2-byte characters and 1000 bytes mixing 1-, 3- and 4-byte ones.
                "source_context": "é" * 125,
                "session_context": ("a上🎬" * 125),
                "class_id": 0,
                "vod_sub_app_id": 0,
                "max_file_size": 0,
            },
        ),
        base(
            "empty_values",
            policy={"procedure": "", "source_context": "", "storage_region": ""},
        ),
        base(
            "far_times",
            current_time_stamp=4102444800,  # 2100-01-01
            expire_time=4102444800 + 7776000,
            random=1,
            policy={"max_file_size": 1},
        ),
        base(
            "negative_times",
            current_time_stamp=-86400,
            expire_time=-1,
            policy={"class_id": 7},
        ),
    ]


def parse_only_vectors():
    out = []

    # Another issuer's order: oneTimeValid last, optional parameters interleaved.
    v = base(
        "foreign_order",
        policy={"procedure": "P1", "class_id": 3, "source_context": "a b"},
    )
    pairs = [
        ("secretId", v["secret_id"]),
        ("currentTimeStamp", v["current_time_stamp"]),
        ("expireTime", v["expire_time"]),
        ("random", v["random"]),
        ("sourceContext", "a b"),
        ("procedure", "P1"),
        ("classId", 3),
        ("oneTimeValid", 1),
    ]
    out.append(build(v, pairs))

    # Required parameters out of order, unknown parameters kept.
    v = base(
        "unknown_parameters",
        one_time_valid=False,
        policy={"storage_region": "ap-guangzhou"},
        extra={"isTranscode": "1", "future param": "x&y=z"},
    )
    pairs = [
        ("random", v["random"]),
        ("expireTime", v["expire_time"]),
        ("isTranscode", "1"),
        ("secretId", v["secret_id"]),
        ("storageRegion", "ap-guangzhou"),
        ("currentTimeStamp", v["current_time_stamp"]),
    ]
    original = "&".join(f"{n}={encode_uri_component(x)}" for n, x in pairs)
    original += "&" + encode_uri_component("future param") + "=" + encode_uri_component("x&y=z")
    v["original"] = original
    v["signature"] = sign(v["secret_key"], original)
    out.append(v)

    # PHP's http_build_query style: urlencode, "+" for spaces; then lower-case escapes.
    from urllib.parse import quote_plus

    v = base(
        "plus_for_space",
        policy={"procedure": "QCVB_SimpleProcessFile", "source_context": "user-42/上传 #1 ~*"},
    )
    out.append(build(v, encode=lambda x: quote_plus(str(x))))

    v = base(
        "lower_case_escapes",
        policy={"source_context": "user-42/上传 #1", "session_context": "ä ö"},
    )
    out.append(
        build(
            v,
            encode=lambda x: re.sub(
                r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), encode_uri_component(x)
            ),
        )
    )

    # Everything percent-encoded, even characters that need no encoding.
    v = base("over_encoded", policy={"procedure": "P", "task_priority": 5})
    out.append(
        build(v, encode=lambda x: "".join(f"%{b:02X}" for b in str(x).encode("utf-8")))
    )
    return out


def main():
    signs = [build(v) for v in sign_vectors()]
    doc = {
        "about": "Generated by tests/vectors/make_vectors.py (Python stdlib, Tencent's published "
        "algorithm); do not edit by hand. Regenerate with: "
        "python3 tests/vectors/make_vectors.py > tests/vectors/tencent_vectors.json",
        "sign": signs,
        "parse_only": parse_only_vectors(),
    }
    json.dump(doc, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
