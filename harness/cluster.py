"""Is there a SLURM cluster to submit to? Ask it.

`which srun` is not enough: submitit's AutoExecutor picks SLURM whenever `srun` is installed, even
with no controller answering (then every sbatch fails after ~9 s). So the harness asks the
controller (`sinfo` must exit 0 and list a partition) and chooses the executor from the answer.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from harness.executors import EXECUTORS  # the one registry of executor names


@dataclass(frozen=True, kw_only=True)
class ClusterProbe:
    available: bool
    reason: str
    partitions: tuple[str, ...] = ()
    detail: str = ""  # the scheduler's own words, when they help


def probe_slurm(timeout_s: float = 15.0) -> ClusterProbe:
    if shutil.which("sinfo") is None:
        return ClusterProbe(available=False, reason="`sinfo` is not installed")
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return ClusterProbe(
            available=False, reason=f"`sinfo` did not answer within {timeout_s:g} s"
        )
    if proc.returncode != 0:
        # SLURM installed but no controller running (e.g. a test cluster that was stopped): a plain
        # fact for the plan's executor line; sinfo's own error text goes only to --executor slurm.
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        return ClusterProbe(
            available=False,
            reason="SLURM is installed but no controller answers `sinfo`",
            detail=f"`sinfo` failed (exit {proc.returncode}): {msg[-1] if msg else ''}",
        )
    parts = tuple(p.strip() for p in proc.stdout.split() if p.strip())
    if not parts:
        return ClusterProbe(available=False, reason="`sinfo` answered but lists no partition")
    return ClusterProbe(
        available=True,
        reason=f"SLURM controller answers `sinfo` (partitions: {', '.join(parts)})",
        partitions=parts,
    )


def choose_executor(requested: str | None) -> tuple[str, str]:
    """(executor name, why): the requested one, else slurm when a cluster answers, else local."""
    if requested is not None:
        if requested not in EXECUTORS:
            raise ValueError(f"unknown executor {requested!r}; choose one of {tuple(EXECUTORS)}")
        if requested == "slurm":
            probe = probe_slurm()
            if not probe.available:
                raise RuntimeError(
                    f"--executor slurm, but no cluster answers: {probe.detail or probe.reason}. "
                    "Start one (scripts/slurm_up.sh) or use --executor local."
                )
            return "slurm", f"requested; {probe.reason}"
        return requested, "requested with --executor"
    probe = probe_slurm()
    if probe.available:
        return "slurm", f"default: {probe.reason}"
    return "local", f"default: no SLURM cluster ({probe.reason})"
