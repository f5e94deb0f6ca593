"""Checks that pinned locks still match requirements.in.

    lock_check.py requirements.in LOCK [LOCK ...]

Prints one line per problem, each naming the file and the command that fixes it, and exits 1;
prints a one-line summary and exits 0 when every lock is current.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

FIX = "run: bazel run //third_party:requirements.update"


def read_requirements_in(path: Path) -> dict[str, Requirement]:
    reqs = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            raise SystemExit(f"{path}:{number}: not a requirement: {line!r} ({e})") from None
        reqs[canonicalize_name(req.name)] = req
    return reqs


class Pin:
    def __init__(self, name: str, version: str):
        self.name, self.version, self.hashes, self.via = name, version, [], []


def read_lock(path: Path) -> dict[str, Pin]:
    pins: dict[str, Pin] = {}
    current = None
    in_via = False
    for raw in path.read_text().splitlines():
        line = raw.strip()
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", raw)
        if m:
            current = Pin(m.group(1), m.group(2))
            pins[canonicalize_name(current.name)] = current
            in_via = False
            continue
        if current is None:
            continue
        for h in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            current.hashes.append(h)
        if line.startswith("# via"):
            rest = line[len("# via"):].strip()
            in_via = not rest
            if rest:
                current.via.append(rest)
        elif in_via and line.startswith("#   "):
            current.via.append(line[1:].strip())
        elif not line.startswith("--hash") and not line.startswith("#"):
            in_via = False
    return pins


def check(requirements_in: Path, lock: Path) -> list[str]:
    wanted = read_requirements_in(requirements_in)
    pins = read_lock(lock)
    problems = []
    for key, req in sorted(wanted.items()):
        pin = pins.get(key)
        if pin is None:
            problems.append(f"{lock}: {req.name} is in {requirements_in.name} but not pinned; {FIX}")
        elif req.specifier and not req.specifier.contains(Version(pin.version), prereleases=True):
            problems.append(f"{lock}: {pin.name}=={pin.version} does not satisfy {req} from {requirements_in.name}; {FIX}")
    for key, pin in sorted(pins.items()):
        direct = any(v.startswith("-r ") for v in pin.via)
        if direct and key not in wanted:
            problems.append(f"{lock}: {pin.name} is pinned as a direct requirement but is no longer in {requirements_in.name}; {FIX}")
        if not pin.hashes:
            problems.append(f"{lock}: {pin.name}=={pin.version} has no --hash pin; {FIX}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    requirements_in, locks = Path(argv[0]), [Path(p) for p in argv[1:]]
    problems = [p for lock in locks for p in check(requirements_in, lock)]
    if problems:
        print("\n".join(problems))
        return 1
    print(f"{len(locks)} lock(s) match {requirements_in}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
