"""Regenerate this directory from a checkout of github.com/common-workflow-language/cwl-v1.2.

    python3 tests/data/cwl-v1.2/select_subset.py /path/to/cwl-v1.2 tests/data/cwl-v1.2

Keeps the conformance entries tagged both ``required`` and ``command_line_tool`` (README.md here says
why), in the suite's own order and words, and copies the files they name: the tool, the job, and every
string in them (recursively) that names an existing file or directory of the suite, unchanged.
"""

from __future__ import annotations

import os
import shutil
import sys

import yaml

TAGS = {"required", "command_line_tool"}


def select(suite: str, rel: str, out: dict[str, list]) -> list[dict]:
    """The chosen entries of the list file ``rel`` (with its ``$import`` lines kept where the imported
    list keeps any), recorded in ``out`` by file; every entry exactly as the suite has it."""
    with open(os.path.join(suite, rel), encoding="utf-8") as f:
        listed = yaml.safe_load(f)
    kept = []
    for entry in listed:
        if "$import" in entry:
            sub = os.path.normpath(os.path.join(os.path.dirname(rel), entry["$import"]))
            if select(suite, sub, out):
                kept.append(entry)
        elif TAGS <= set(entry.get("tags", [])):
            kept.append(entry)
    out[rel] = kept
    return kept


def strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def referenced(suite: str, rel: str, seen: set[str]) -> None:
    if rel in seen:
        return
    seen.add(rel)
    path = os.path.join(suite, rel)
    if os.path.isfile(path) and not rel.endswith(".cwl"):  # secondary files: A -> A.s2, x.bam -> x.bai
        stem = os.path.basename(rel).split(".", 1)[0]
        for name in os.listdir(os.path.dirname(path)):
            if name.startswith(stem + ".") and os.path.isfile(os.path.join(os.path.dirname(path), name)):
                seen.add(os.path.join(os.path.dirname(rel), name))
    if os.path.isdir(path) or not rel.endswith((".cwl", ".yml", ".yaml", ".json")):
        return
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError):
        return
    base = os.path.dirname(path)
    for s in strings(doc):
        s = s.split("#", 1)[0].replace("%23", "#").replace("%3A", ":")
        if not s or "\n" in s or len(s) > 300 or s.startswith(("/", "http:", "https:")):
            continue
        target = os.path.normpath(os.path.join(base, s.removeprefix("file://")))
        if os.path.exists(target) and target.startswith(os.path.join(suite, "tests") + os.sep):
            referenced(suite, os.path.relpath(target, suite), seen)


def main(suite: str, dest: str) -> None:
    suite = os.path.abspath(suite)
    lists: dict[str, list] = {}
    select(suite, "conformance_tests.yaml", lists)
    files: set[str] = set()
    count = 0
    for rel, kept in lists.items():
        base = os.path.dirname(rel)
        for e in kept:
            if "$import" in e:
                continue
            count += 1
            for key in ("tool", "job"):
                if e.get(key):
                    referenced(suite, os.path.normpath(os.path.join(base, e[key].split("#", 1)[0])), files)
            for s in strings(e.get("output")):  # outputs compared with a file of the suite
                target = os.path.normpath(os.path.join(suite, base, s))
                if "\n" not in s and os.path.isfile(target):
                    files.add(os.path.relpath(target, suite))
    for rel in sorted(files):
        src, dst = os.path.join(suite, rel), os.path.join(dest, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.isdir(src):
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
    shutil.copy2(os.path.join(suite, "LICENSE.txt"), os.path.join(dest, "LICENSE.txt"))
    for rel, kept in lists.items():
        if not kept:
            continue
        os.makedirs(os.path.dirname(os.path.join(dest, rel)) or dest, exist_ok=True)
        with open(os.path.join(dest, rel), "w", encoding="utf-8") as f:
            f.write("# The entries of the CWL v1.2 conformance suite's list of the same name tagged required and\n"
                    "# command_line_tool, unchanged (see README.md in tests/data/cwl-v1.2).\n")
            yaml.safe_dump(kept, f, sort_keys=False, width=120)
    print(f"{count} entries, {len(files)} files")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
