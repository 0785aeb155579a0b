#!/usr/bin/env bash
# Checks that every relative link in the repository's Markdown points inside the repository:
# to a file or directory that exists and, for `#anchor` links, to a heading of that file.
# The repository must stand alone, so a link that leaves it (`../shared/…`) is an error too.
# Web links (http://, https://, mailto:) are not followed.
#
# Usage: scripts/check-links.sh [FILE.md …]   (default: README.md, docs/*.md, charts/*/README.md)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$#" -eq 0 ]; then
    set -- README.md docs/*.md charts/*/README.md
fi

python3 - "$@" <<'PY'
import os
import re
import subprocess
import sys

ROOT = os.path.realpath(".")
# What a clone has: tracked files plus new ones not ignored (target/ and the like do not count).
FILES = set(
    subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True, text=True,
    ).stdout.splitlines()
)
DIRS = {os.path.dirname(f) for f in FILES}
DIRS |= {d.rsplit("/", i)[0] for d in list(DIRS) for i in range(1, d.count("/") + 1)}
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose_lines(path):
    """The file's numbered lines outside fenced code blocks."""
    inside = False
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if FENCE.match(line):
                inside = not inside
            elif not inside:
                yield number, line


def anchors(path):
    """GitHub's anchors for the file's headings: the heading text in lower case, everything
    but letters, digits, '-', '_' and spaces dropped, spaces turned into '-'; a repeated
    anchor gets -1, -2, …"""
    found, seen = set(), {}
    for _, line in prose_lines(path):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


errors = 0
checked = 0
for md in sys.argv[1:]:
    for number, line in prose_lines(md):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                continue  # http:, https:, mailto:
            checked += 1
            path, _, anchor = target.partition("#")
            resolved = os.path.realpath(os.path.join(os.path.dirname(md), path or os.path.basename(md)))
            relative = os.path.relpath(resolved, ROOT)
            problem = None
            if relative == ".." or relative.startswith(".." + os.sep):
                problem = "points outside the repository"
            elif relative not in FILES and relative not in DIRS and relative != ".":
                problem = "is not a file of the repository"
            elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
                problem = f"has no heading for #{anchor}"
            if problem:
                errors += 1
                print(f"{md}:{number}: {target} {problem}")

print(f"{checked} relative links checked in {len(sys.argv) - 1} files, {errors} broken")
sys.exit(1 if errors else 0)
PY
