"""What each cell of a recipe asks Slurm for (a spec's `slurm:`): where a cell runs, never what it computes, so it
is no part of a cell's hash. Checked with the rest of the spec (`check_slurm`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from align_proxy.studies.spec_checks import check_keys, fail


@dataclass(frozen=True)
class SlurmResources:
    """A recipe's Slurm job per cell (the spec's `slurm:`). Defaults suit a CLIMB proxy cell on one GPU: a 350M
    DPO or SFT run takes hours on one card, so 12 h leaves room; 8 cores feed its data loading and evaluation."""

    gpus_per_cell: int | None = None  # None: the cell's processes (a `launch:` cell's num_processes), else 1
    cpus: int = 8  # per node of the cell
    mem: str | None = "64G"  # per node, as sbatch --mem takes it; None: the partition's default
    time: str = "12:00:00"  # as sbatch --time takes it: minutes, H:MM:SS or D-HH:MM:SS
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    sbatch: dict = field(default_factory=dict)  # any other sbatch option: {exclude: node7, requeue: true}

    def gpus(self, processes: int) -> int:
        return processes if self.gpus_per_cell is None else self.gpus_per_cell

    @property
    def minutes(self) -> int:
        return slurm_minutes(self.time)


def slurm_minutes(time: str | int) -> int:
    """sbatch's --time in minutes: `90`, `1:30:00`, `2-00:00:00` (also `MM:SS`, `D-HH`, `D-HH:MM`).

    >>> slurm_minutes("1-02:30:00"), slurm_minutes("45"), slurm_minutes("1:30:00")
    (1590, 45, 90)
    """
    text = str(time).strip()
    days, _, clock = text.rpartition("-") if "-" in text else ("0", "", text)
    parts = [int(p) for p in clock.split(":")]  # ValueError on anything else: the spec check reports it
    if days != "0" or "-" in text:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    else:
        hours, minutes, seconds = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}.get(len(parts), (None,) * 3)
    if hours is None or len(parts) > 3 or min(parts) < 0:
        raise ValueError(f"not a Slurm time: {time!r}")
    return int(days) * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def check_slurm(values: dict, base: SlurmResources, path: Path | str, where: str) -> SlurmResources:
    """`slurm: {gpus_per_cell: 1, cpus: 8, mem: 64G, time: "12:00:00", partition: gpu, ...}` over `base` (the
    defaults, or a spec's resources under `--slurm KEY=VALUE` overrides); checked like every other key."""
    fields = {f.name: f for f in dataclasses.fields(SlurmResources)}
    check_keys(values, set(fields), Path(path), where)
    for key, value in values.items():
        if key in ("gpus_per_cell", "cpus") and (not isinstance(value, int) or isinstance(value, bool) or
                                                 value < (0 if key == "gpus_per_cell" else 1)):
            fail(path, f"{where}.{key} must be a whole number ({'0 or more' if key == 'gpus_per_cell' else '1 or more'}), "
                       f"got {value!r}")
        if key == "sbatch" and not isinstance(value, dict):
            fail(path, f"{where}.sbatch must be a mapping of sbatch options without their dashes, e.g. "
                       f"{{exclude: node7}}, got {value!r}")
        if key in ("mem", "partition", "account", "qos", "constraint", "time") and value is not None \
                and not isinstance(value, (str, int)):
            fail(path, f"{where}.{key} must be a string, got {value!r}")
    if "time" in values:
        try:
            slurm_minutes(values["time"])
        except ValueError:
            fail(path, f"{where}.time {values['time']!r} is not a Slurm time: use minutes, H:MM:SS or D-HH:MM:SS")
    return dataclasses.replace(base, **{k: str(v) if k in ("time", "mem") and v is not None else v
                                        for k, v in values.items()})
