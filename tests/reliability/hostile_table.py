"""Markdown table of the hostile cases a test run recorded (``SALTX_HOSTILE_LOG``).

    SALTX_HOSTILE_LOG=/tmp/hostile.jsonl pytest tests/reliability -k "hostile or damaged"
    python tests/reliability/hostile_table.py /tmp/hostile.jsonl
    python tests/reliability/hostile_table.py /tmp/hostile.jsonl "silent data:"   # one class

With a prefix (``untrusted target:``, ``untrusted run dir:``, ``untrusted ckpt:``,
``secrets:``, ``silent data:``, ``config value:``) only the cases of that class are shown,
without the prefix.

Cases that differ only in a number (row, value, size) are folded into one line, which
shows the first message seen; temporary paths in messages are shortened to ``<tmp>``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def family(case: str) -> str:
    """The case with its numbers replaced by ``N`` (one line per family)."""
    case = re.sub(r"\b(jets|tracks)\.(?!attrs)[A-Za-z]\w*", r"\1.<field>", case)
    case = re.sub(r"stored as (u?int\d+|float\d+|bool)$", "stored as a number type", case)
    case = re.sub(r"\b(flavour_label|ftagTruthOriginLabel)=", "<label>=", case)
    case = re.sub(r"-?\binf\b|\bnan\b", "NaN/inf", case)
    return re.sub(r"(?<![\w.])-?\d+(\.\d+)?(?![\w])", "N", case)


def clean(message: str, width: int = 230) -> str:
    text = re.sub(r"(/tmp|/private)/[\w./-]*?/(\w+\.(h5|yaml|pt))", r"<tmp>/\2", message)
    text = re.sub(r"/tmp/pytest-of-[\w-]+/pytest-\d+/", "<tmp>/", text)
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


OK_SHOWN = {
    "": "trains (finite losses)",
    "secrets:": "nothing leaked",
    "silent data:": "trains",
    "config value:": "accepted",
}


CLASSES = (
    "untrusted target:",
    "untrusted run dir:",
    "untrusted ckpt:",
    "secrets:",
    "silent data:",
    "config value:",
)


def table(lines: list[dict], prefix: str = "") -> str:
    rows: dict[tuple[str, str], tuple[str, int]] = {}
    for r in lines:
        if not r["case"].startswith(prefix) or (not prefix and r["case"].startswith(CLASSES)):
            continue
        key = (family(r["case"][len(prefix) :].strip()), r["type"])
        first, n = rows.get(key, (clean(r["message"]), 0))
        rows[key] = (first, n + 1)
    out = ["| case | examples | outcome | message |", "|---|---|---|---|"]
    for (case, kind), (message, n) in sorted(rows.items()):
        shown = OK_SHOWN.get(prefix, "accepted") if kind == "ok" else f"`{kind}`"
        out.append(f"| {case.replace('|', '/')} | {n} | {shown} | {message} |")
    return "\n".join(out)


if __name__ == "__main__":
    records = [json.loads(x) for x in Path(sys.argv[1]).read_text().splitlines() if x.strip()]
    print(table([r for r in records if "case" in r], sys.argv[2] if len(sys.argv) > 2 else ""))
