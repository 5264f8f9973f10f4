"""Copy the small evidence of a folder of runs into ``docs/runs/<name>/`` for committing: per run
its resolved ``config.yaml``, ``log.jsonl``, ``finetune.json`` or ``claim.json`` and the eval
JSON; the folder's own JSON and Markdown (report, base scores); optionally every hypothesis
file packed into one reproducible ``hyps.tar.xz`` (so that the paired bootstrap can be rerun).
Never checkpoints, SentencePiece models or encoded data.

    python experiments/evidence.py runs/powered_de_en docs/runs/powered_de_en --hyps

``--finished`` leaves out the runs still under way (no ``finetune.json`` or ``claim.json``), so
a sweep's finished runs are committed while the others train.

Refuses (before writing) when a copied file names an absolute path of this machine: committed
evidence regenerates from relative paths only.
"""

from __future__ import annotations

import argparse
import io
import lzma
import shutil
import sys
import tarfile
from pathlib import Path

RUN_FILES = ("config.yaml", "log.jsonl", "finetune.json", "claim.json", "eval/*.json")
RECORDS = ("finetune.json", "claim.json")  # a run holding one of them is finished
TOP_FILES = ("*.json", "*.md")


def run_folders(runs: Path, finished: bool = False) -> list[Path]:
    """The run folders of ``runs`` (holding a ``config.yaml``), sorted; with ``finished``
    only those holding one of ``RECORDS``."""
    return sorted(p for p in runs.iterdir() if (p / "config.yaml").is_file()
                  and (not finished or any((p / r).is_file() for r in RECORDS)))


def evidence_files(runs: Path, finished: bool = False) -> list[Path]:
    """The files to copy, relative to ``runs``: its top-level JSON and Markdown, and per run
    folder (``run_folders``) the ``RUN_FILES``."""
    found = [p for pattern in TOP_FILES for p in runs.glob(pattern) if p.is_file()]
    for run in run_folders(runs, finished):
        found += [p for pattern in RUN_FILES for p in run.glob(pattern) if p.is_file()]
    return sorted(p.relative_to(runs) for p in found)


def hypothesis_files(runs: Path, finished: bool = False) -> list[Path]:
    """Every ``RUN/eval/*.hyp`` of the ``run_folders``, relative to ``runs``, sorted."""
    return sorted(p.relative_to(runs) for run in run_folders(runs, finished)
                  for p in run.glob("eval/*.hyp"))


def machine_paths(runs: Path) -> list[str]:
    """Absolute paths that must not appear in committed files: the runs folder's and the
    working directory's, resolved."""
    return sorted({str(runs.resolve()), str(Path.cwd().resolve())}, key=len, reverse=True)


def check_relative(runs: Path, files: list[Path]) -> None:
    """ValueError naming the first file (and line) that holds a ``machine_paths`` string."""
    banned = machine_paths(runs)
    for rel in files:
        for number, line in enumerate((runs / rel).read_text(errors="replace").splitlines(), 1):
            hit = next((b for b in banned if b in line), None)
            if hit:
                raise ValueError(f"{runs / rel}:{number}: names the absolute path {hit}")


def pack(runs: Path, files: list[Path], out: Path) -> None:
    """``files`` (relative to ``runs``) into the xz tarball ``out``, byte-for-byte the same for
    the same inputs (sorted, no owners, no times)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for rel in files:
            data = (runs / rel).read_bytes()
            info = tarfile.TarInfo(rel.as_posix())
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    out.write_bytes(lzma.compress(buffer.getvalue(), preset=9))


def copy_evidence(runs: Path, out: Path, hyps: bool = False,
                  finished: bool = False) -> list[Path]:
    """Copy ``evidence_files`` of ``runs`` into ``out`` (and ``hyps.tar.xz``); the files
    written, relative to ``out``."""
    if not runs.is_dir():
        raise FileNotFoundError(f"{runs}: no such folder of runs")
    files = evidence_files(runs, finished)
    if not files:
        raise ValueError(f"{runs}: no run folders (with config.yaml) and no report")
    check_relative(runs, files)
    for rel in files:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(runs / rel, out / rel)
    written = list(files)
    if hyps:
        found = hypothesis_files(runs, finished)
        if found:
            pack(runs, found, out / "hyps.tar.xz")
            written.append(Path("hyps.tar.xz"))
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="a folder of runs (runs/NAME)")
    parser.add_argument("out", type=Path, help="where the evidence goes (docs/runs/NAME)")
    parser.add_argument("--hyps", action="store_true", help="also pack the hypotheses")
    parser.add_argument("--finished", action="store_true",
                        help="only the finished runs (with finetune.json or claim.json)")
    args = parser.parse_args(argv)
    try:
        written = copy_evidence(args.runs, args.out, args.hyps, args.finished)
    except (OSError, ValueError) as exc:
        print(f"evidence: error: {exc}", file=sys.stderr)
        return 2
    size = sum((args.out / p).stat().st_size for p in written)
    print(f"{len(written)} files, {size / 1e6:.2f} MB -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
