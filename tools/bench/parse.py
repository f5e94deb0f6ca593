"""Parsing Bazel's and swap_load.py's output into the numbers BENCHMARKS.md reports (pure
functions; tested in tests/bench/bench_test.py)."""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path


def parse_executed(log: str) -> tuple[int, int] | None:
    """'Executed 2 out of 6 tests: ...' -> (2, 6)."""
    m = re.search(r"^Executed (\d+) out of (\d+) tests?", log, re.MULTILINE)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_processes(log: str) -> dict[str, int]:
    """'INFO: 40 processes: 6 remote cache hit, 34 internal.' -> {'remote cache hit': 6, 'internal': 34}."""
    lines = re.findall(r"^INFO: \d+ process(?:es)?(?:: (.*?))?\.?$", log, re.MULTILINE)
    if not lines:
        return {}
    counts = {}
    for part in (lines[-1] or "").split(","):
        m = re.match(r"\s*(\d+) (.+?)\s*$", part)
        if m:
            counts[m.group(2)] = int(m.group(1))
    return counts


def test_results(log: str) -> list[tuple[str, bool, str]]:
    """Summary lines '//pkg:t   (cached) PASSED in 0.2s' -> [(label, cached, status)]."""
    out = []
    for m in re.finditer(r"^(//\S+)\s+(\(cached\) )?(PASSED|FAILED|TIMEOUT|FLAKY|NO STATUS|SKIPPED)", log, re.MULTILINE):
        out.append((m.group(1), bool(m.group(2)), m.group(3)))
    return out


def parse_swap(text: str) -> dict:
    """The numbers tests/serve/swap_load.py prints."""
    out: dict = {}
    m = re.search(r"promote returned -> first response from v2: ([\d.]+) s", text)
    out["rollout_s"] = float(m.group(1)) if m else None
    m = re.search(r"failed requests: (\d+)", text)
    out["failed"] = int(m.group(1)) if m else None
    m = re.search(r"returned after ([\d.]+) s", text)
    out["promote_s"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests to http", text)
    out["requests"] = int(m.group(1)) if m else None
    for phase in ("before", "during", "after", "all"):
        m = re.search(rf"^\s+{phase}\s+(\d+)\s+(\d+)\s+([\d.na]+)\s+([\d.na]+)\s+([\d.na]+)", text, re.MULTILINE)
        if m:
            out[phase] = {
                "requests": int(m.group(1)),
                "failed": int(m.group(2)),
                "p50_ms": float(m.group(3)),
                "p99_ms": float(m.group(4)),
                "max_ms": float(m.group(5)),
            }
    m = re.search(r"server's rollout of v2 \((\w+)\): (.*)", text)
    out["rollout_steps"] = m.group(2).strip() if m else None
    return out


def profile_summary(path: Path) -> dict:
    """Where a `bazel ... --profile` run spent its time: phases, critical path, action kinds and,
    inside sandboxed spawns, sandbox set-up, the process itself and sandbox tear-down."""
    data = json.loads(Path(path).read_text())
    events = data["traceEvents"] if isinstance(data, dict) else data
    spans = [e for e in events if e.get("ph") == "X"]
    if not spans:
        return {}
    begin = min(e["ts"] for e in spans)
    end = max(e["ts"] + e.get("dur", 0) for e in spans)
    kinds: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    spawn: dict[str, float] = collections.defaultdict(float)
    critical = []
    repository = []
    analysis = 0.0
    for e in spans:
        seconds = e.get("dur", 0) / 1e6
        name, cat = e.get("name", ""), e.get("cat")
        if cat == "action processing":
            kind = action_kind(name)
            kinds[kind][0] += 1
            kinds[kind][1] += seconds
        elif cat == "critical path component":
            critical.append((name, seconds))
        elif cat == "general information" and name in (
            "subprocess.run", "sandbox.createFileSystem", "sandbox.delete", "MerkleTree.build(ActionInput)",
            "AbstractSpawnStrategy.getInputMapping",
        ):  # fmt: skip
            spawn[name.split("(")[0]] += seconds
        elif cat in ("remote output download", "remote action cache check"):
            spawn[cat] += seconds
        elif cat == "general information" and name == "runAnalysisPhase":
            analysis += seconds
        elif cat == "Starlark repository function call" and name.startswith("//external:"):
            repository.append((name, seconds))
        elif cat == "Starlark repository function call" and name.startswith("local: "):
            repository.append((repository_command(name), seconds))
    markers = {e["name"]: (e["ts"] - begin) / 1e6 for e in events if e.get("ph") == "i" and "name" in e}
    return {
        "wall_s": (end - begin) / 1e6,
        # Phase boundaries, seconds from the start: start-up, loading and analysis, execution.
        "phases": {k: markers[k] for k in ("Load and analyze dependencies", "Build artifacts", "Complete build") if k in markers},
        "analysis_s": analysis,
        "critical_path": critical,
        "action_kinds": {k: {"count": n, "seconds": s} for k, (n, s) in sorted(kinds.items(), key=lambda kv: -kv[1][1])},
        "spawn": dict(spawn),
        "repository_rules": sorted(repository, key=lambda r: -r[1])[:6],
    }


def repository_command(name: str) -> str:
    """A repository rule's command as the profile names it (truncated by Bazel) -> what it is."""
    if " -m pi" in name:
        return "pip install of the lock"
    if " -S -m" in name:
        return "byte-compiling site-packages (compileall)"
    return name[len("local: "):].replace("/usr/share/bazel/process-wrapper ", "")[:60]


def profile_line(prof: dict) -> str:
    """One sentence of a profile summary, for the details."""
    kinds = ", ".join(f"{k} {v['count']}× {v['seconds']:.1f} s" for k, v in prof.get("action_kinds", {}).items() if v["seconds"] >= 0.5)
    spawn = prof.get("spawn", {})
    return (
        f"{prof.get('wall_s', 0):.1f} s profiled: analysis {prof.get('analysis_s', 0):.1f} s; action threads: {kinds or 'nothing over 0.5 s'}; "
        f"in sandboxes: processes {spawn.get('subprocess.run', 0):.1f} s, set-up {spawn.get('sandbox.createFileSystem', 0):.1f} s, "
        f"tear-down {spawn.get('sandbox.delete', 0):.1f} s"
    )


def action_kind(description: str) -> str:
    """'Exporting tiny_transformer (train, ...)' -> 'Exporting'; 'Creating runfiles tree ...' -> 'Creating runfiles tree'."""
    for prefix in ("Creating runfiles tree", "Creating source manifest", "Testing", "Exporting", "Gating"):
        if description.startswith(prefix):
            return prefix
    return "other"
