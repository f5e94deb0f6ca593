"""The benchmark's report: the table, and the prose around it (where the time goes in the
slowest row; what a Bazel or promote row spent its time on)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from parse import parse_processes, profile_summary
from runner import LOAD_SAMPLES


@dataclass
class Row:
    id: str
    what: str
    measured: str
    baseline: str
    ratio: str
    target: str = "—"
    verdict: str = "—"
    seconds: float = 0.0  # the row's largest absolute time, to find the slowest row
    name: str = ""  # a short name for the prose
    notes: list[str] = field(default_factory=list)


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def mib_s(size: int, seconds: float) -> str:
    return f"{size / (1 << 20) / seconds:.0f} MiB/s"


def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def previous_ratios(text: str) -> tuple[str, dict[str, str]]:
    """(when, {row id: ratio}) from an earlier BENCHMARKS.md, for the table's "previous" column."""
    when = re.search(r"^Produced by `tools/bench/run` on ([0-9-]+)[^,]*, commit `([0-9a-f]+)`", text, re.MULTILINE)
    ratios = {}
    header = None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 5:
            continue
        if cells[0] == "#":
            header = cells
            continue
        if header and "ratio" in header and cells[0] and cells[0] != "---":
            ratios[cells[0]] = cells[header.index("ratio")]
    return (f"{when.group(1)}, {when.group(2)[:7]}" if when else "?"), ratios


def render_table(rows: list[Row], previous: tuple[str, dict[str, str]] | None = None) -> str:
    when, before = previous or ("", {})
    lines = [
        "| # | what | modelgate | baseline | ratio | " + (f"previous ({when}) | " if previous else "") + "target | verdict |",
        "| --- | --- | --- | --- | --- | " + ("--- | " if previous else "") + "--- | --- |",
    ]
    for r in rows:
        prev = f"{before.get(r.id, 'new row')} | " if previous else ""
        lines.append(f"| {r.id} | {r.what} | {r.measured} | {r.baseline} | {r.ratio} | {prev}{r.target} | {r.verdict} |")
    return "\n".join(lines)


class ReportProse:
    """The report's text, from what the rows measured (mixed into rows.Bench: self.rows, self.details)."""

    def slowest(self) -> Row:
        """The slowest measurement of modelgate itself (what-if and peer rows are comparisons)."""
        return max((r for r in self.rows if r.verdict not in ("what-if", "peer")), key=lambda r: r.seconds)

    def where_the_time_goes(self) -> str:
        d = self.data
        parts = []
        slow = self.slowest()
        parts.append(f"The slowest row is **{slow.id}** ({slow.name or slow.what}, {fmt_s(slow.seconds)}).")
        cold_profile = self.work / "profile-cold.json"
        if d.get("cold_b") and cold_profile.exists():
            parts.append(self.bazel_paragraph(profile_summary(cold_profile), d))
        if (d.get("registry") or {}).get("profile"):
            parts.append(self.promote_paragraph(d["registry"]))
        return "\n\n".join(parts)

    def bazel_paragraph(self, prof: dict, d: dict) -> str:
        kinds = prof["action_kinds"]
        thread_s = sum(k["seconds"] for k in kinds.values())
        spawn = prof["spawn"]
        runfiles = kinds.get("Creating runfiles tree", {"count": 0, "seconds": 0.0})
        create, delete = spawn.get("sandbox.createFileSystem", 0.0), spawn.get("sandbox.delete", 0.0)
        processes = spawn.get("subprocess.run", 0.0)
        trees, links = d.get("runfiles", (0, 0))
        crit = sum(sec for _, sec in prof["critical_path"])
        crit_top = max(prof["critical_path"], key=lambda c: c[1], default=("?", 0.0))
        heavy = ("Exporting", "Gating", "Testing")
        spawns = sum(kinds.get(k, {"count": 0})["count"] for k in heavy)
        heavy_s = sum(kinds.get(k, {"seconds": 0.0})["seconds"] for k in heavy)
        sandboxed = parse_processes(d["cold_b"].log).get("linux-sandbox", 0)

        def share(x: float) -> str:
            return f"{x:.0f} s ({x / thread_s:.0%})" if thread_s else f"{x:.0f} s"

        text = (
            f"**Profile of the cold `bazel test //models/...` (`--profile`, {fmt_s(d['cold_b'].wall_s)} wall).** "
            f"Bazel's action threads were busy for {thread_s:.0f} s in all, {share(heavy_s)} of it in the {spawns} export, "
            "gate and test actions (each a process that imports torch: a fork of the persistent worker or a "
            f"linux-sandbox process). The {sandboxed} linux-sandbox processes ran "
            f"{processes:.0f} s (Bazel 4's profile does not time the worker's forks apart from their actions). Setting up "
            f"and deleting the linux-sandboxes took {share(create + delete)} (set-up {create:.0f} s, deletion {delete:.0f} s): each "
            f"sandbox is a tree of one symlink per input file, and the {trees} runfiles manifests list {links:,} files, "
            f"~{links // max(trees, 1):,} per test or tool (a pip package is one file, its lock entry: README, \"How a test "
            "sees its packages\"; the previous layout listed ~24k installed files per test). "
        )
        if runfiles["seconds"] >= 1:
            text += f"Building runfiles symlink trees in the output tree took another {share(runfiles['seconds'])}. "
        text += (
            f"Analysis took {prof['analysis_s']:.1f} s. The critical path was {crit:.0f} s, led by {crit_top[0]} "
            f"({crit_top[1]:.0f} s): with {os.cpu_count()} CPUs and {spawns} heavy processes the run is throughput-bound, "
            "so every second spent on file trees is a second of wall time. "
        )
        fetch_profile = self.work / "profile-fetch.json"
        if d.get("fetch_b") and fetch_profile.exists():
            rules = profile_summary(fetch_profile).get("repository_rules", [])
            repos = [(n, sec) for n, sec in rules if n.startswith("//external:")]
            commands = [(n, sec) for n, sec in rules if not n.startswith("//external:")]
            if repos:
                text += (
                    f"The fetch in row 2b ({fmt_s(d['fetch_b'].wall_s)}, also profiled) is mostly the repository rule "
                    f"`{repos[0][0]}` ({repos[0][1]:.0f} s"
                    + (": " + ", ".join(f"{n} {sec:.0f} s" for n, sec in commands[:2]) if commands else "")
                    + "); a remote cache does not carry external repositories, so every fresh clone pays it once. "
                )
        if d.get("whatif"):
            w = d["whatif"]
            flags, faster = self.variant
            wprof_path = self.work / "profile-whatif.json"
            wprof = profile_summary(wprof_path) if wprof_path.exists() else {}
            wspawn = wprof.get("spawn", {})
            wcreate, wdelete = wspawn.get("sandbox.createFileSystem", 0.0), wspawn.get("sandbox.delete", 0.0)
            wtrees = wprof.get("action_kinds", {}).get("Creating runfiles tree", {"seconds": 0.0})["seconds"]
            label = " and ".join(f"`{f}`" for f in flags)
            pairs = [
                ("sandbox set-up", create, wcreate),
                ("sandbox deletion on the action threads", delete, wdelete),
                ("runfiles trees", runfiles["seconds"], wtrees),
            ]
            moved = ", ".join(f"{what} {a:.0f} s → {b:.0f} s" for what, a, b in pairs if max(a, b) >= 1)
            if faster:
                text += (
                    f"**What makes it faster, measured in this run (row 3c):** {label} took the same cold run from "
                    f"{fmt_s(d['cold_b'].wall_s)} to {fmt_s(w.wall_s)} ({w.wall_s / d['cold_b'].wall_s:.2f}×): {moved}. "
                    "None of them is part of an action's key, so cache hits are unaffected. Adding them to `.bazelrc` "
                    "is the first fix. "
                )
            else:
                text += (
                    f"**What `.bazelrc`'s sandbox settings buy, measured in this run (row 3c):** with Bazel's defaults "
                    f"({label}) the same cold run took {fmt_s(w.wall_s)}, {w.wall_s / d['cold_b'].wall_s:.1f}× as long "
                    f"({moved} with the defaults). "
                )
        text += (
            "**What is left:** the processes themselves. The floor is the same work without Bazel (row 3b); each test "
            "target is still its own process paying the torch import, which keeps a test's result cached on its own "
            "inputs. `pytest models/` (row 3) is not that floor: it does a fraction of the work (no checkpoint, export, "
            "gate or golden test), which is why row 3 misses by far more than Bazel's overhead. The fetch (row 2c) links "
            "the machine's pip store, installed once per lock."
        )
        return text

    def promote_paragraph(self, r: dict) -> str:
        secs = r.get("profile_seconds", {})
        b = r["best"]
        chunks = r.get("chunk_bytes", {})
        mine, default = chunks.get("modelgate", 0), chunks.get("client_default", 0)
        size = r["size_bytes"]

        def kinds(name: str) -> str:
            found = r["profile"].get(f"promote_{name}_kinds") or {}
            return ", ".join(f"{kind} {sec:.2f} s" for kind, sec in found.items() if sec >= 0.01)

        text = (
            "**Profile of promote (cProfile, one extra promote per backend, not among the timings; own time by kind "
            f"of work).** To fake-gcs-server, {fmt_s(secs.get('gcs', 0))}: {kinds('gcs')}. "
        )
        if mine and default and mine < default:
            text += (
                f"Modelgate uploads in {mine >> 20} MiB chunks (`UPLOAD_CHUNK` in `tools/modelgate/registry/storage/gcs.py`, "
                f"{-(-size // mine)} requests per blob) where `upload_from_filename` uses the client's default "
                f"{default >> 20} MiB ({-(-size // default)}), and fake-gcs-server's cost per chunk grows with the bytes "
                "already received: raise `UPLOAD_CHUNK` to the client default. "
            )
        else:
            text += (
                f"Uploads use the client's {default >> 20} MiB chunks, like `upload_from_filename`; what is left beyond "
                "the wait on the server is the blake3 check of every file before upload (`verify_files`) and signing. "
            )
        text += (
            f"To the local registry, {fmt_s(secs.get('local', 0))} beside a {fmt_s(b['copy'])} `copyfile` "
            f"({fmt_s(b['copy_fsync'])} with fsync, the baseline of row 4b): {kinds('local')}. Promote copies each "
            "missing blob into the registry's temporaries in one pass that also hashes it (the kernel copies, and a "
            "second thread hashes each copied span of the target, so the blake3 is not in this main-thread profile "
            "except as the wait for it), fsyncs it, and links it into place only when every copy of the promote "
            "matched its manifest; the "
            "fsync is the price of a registry that survives a crash. Verified fetch is the same one pass from the "
            f"blob to the output file, without fsync (a fetch is a copy of what the registry holds durably); one "
            f"blake3 pass over these {size / (1 << 30):.2f} GiB on one thread takes "
            f"{fmt_s(r.get('blake3_seconds', float('nan')))} (sha256: {fmt_s(r['sha256_seconds'])}), the floor of "
            "any verified copy on one stream."
        )
        return text

    def report(self) -> str:
        d, m = self.data, self.data["machine"]
        started = d["started"].strftime("%Y-%m-%d %H:%M %Z")
        lines = [
            "# modelgate benchmarks",
            "",
            f"Produced by `tools/bench/run` on {started}, commit `{d['commit'][:12]}`, in {d['total_s'] / 60:.1f} minutes.",
            "",
            f"Machine: `{m['host']}`, {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']:.1f} GiB memory, Linux {m['kernel']}. "
            f"Load average at start {m['loadavg_start'][0]:.2f} / {m['loadavg_start'][1]:.2f} / {m['loadavg_start'][2]:.2f} "
            f"(1/5/15 min); the 1-minute load average ranged {min(LOAD_SAMPLES, default=0):.1f}–"
            f"{max(LOAD_SAMPLES, default=0):.1f} over the run's steps and was {d['loadavg_end'][0]:.2f} at the end"
            + (" — **the machine was shared and busy: absolute times are slow and noisy; each ratio compares runs made "
               "minutes apart in this one run.**" if m["loadavg_start"][0] > (m["nproc"] or 1) else "."),
            "",
            (
                "Every Bazel run is in a fresh clone of HEAD with `--disk_cache=` (the machine-wide disk cache off), so "
                "only what a row sets up is reused, and starts after sync(2) (untimed), so that no step pays for the disk "
                "writes of the one before. Targets come from the adoption checklist; a row that misses says so."
            ),
            "",
            render_table(self.rows, self.previous),
            "",
            "## Details",
            "",
            *[text for _, text in sorted(self.details)],
            "",
            "## Where the time goes",
            "",
            self.where_the_time_goes(),
            "",
        ]
        if self.left_out:
            lines += ["## Left out", "", *[f"- {x}" for x in self.left_out], ""]
        lines += [
            "## Reproduce",
            "",
            "```sh",
            "tools/bench/run                      # everything, 10-20 minutes; writes BENCHMARKS.md",
            "tools/bench/run --only=promote,swap  # a subset: prints the table, writes nothing unless --out=FILE",
            "```",
            "",
        ]
        return "\n".join(lines)
