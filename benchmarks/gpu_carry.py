"""Build the folder that benchmarks/gpu_issue14.sh's device call carries (``.gpu/``, kept out of
git by ``.git/info/exclude``): the Multi30k corpus, a weights-only copy of the harder protocol's
base run, and the finished runs of earlier calls unpacked from their committed evidence, so that
the call trains only what is missing.

    python benchmarks/gpu_carry.py [--out .gpu] [--base runs/multi30k_de_en_60min]
    # then, on the device: GAPLESS_DATA=.gpu/data BASE=.gpu/base RESUME_FROM=.gpu/resume \\
    #     bash benchmarks/gpu_issue14.sh      (run's carry: [".gpu"])

A from-scratch run cut short by the script's cap (``updates`` < ``planned_updates``) is left out
of ``resume/``, so it trains again; so is a run with no record. The base keeps its config,
vocabulary, encoded data and its best checkpoint's ``model.safetensors`` and ``state.json``,
whose checksum list then names the model file only: fine-tunes load no optimizer.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
from pathlib import Path

EVIDENCE = {"scratch": "docs/runs/from_scratch_de_en", "hard": "docs/runs/hard_de_en",
            "claims": "docs/runs/claims_m30k_de_en"}
RECORDS = ("finetune.json", "claim.json")


def finished(run: Path) -> bool:
    """A run whose record exists and, for a from-scratch run, reached its planned updates."""
    for name in RECORDS:
        if (run / name).is_file():
            record = json.loads((run / name).read_text())
            return record.get("updates", 0) >= record.get("planned_updates", 0)
    return False


def resume_folder(evidence: Path, out: Path) -> list[str]:
    """Copy the finished runs (and the folder's own JSON) of ``evidence`` to ``out`` with their
    hypotheses unpacked; return the runs copied."""
    out.mkdir(parents=True, exist_ok=True)
    for f in evidence.glob("*.json"):
        shutil.copy2(f, out / f.name)
    kept = [r.name for r in sorted(evidence.iterdir()) if r.is_dir() and finished(r)]
    for name in kept:
        shutil.copytree(evidence / name, out / name, dirs_exist_ok=True)
    hyps = evidence / "hyps.tar.xz"
    if hyps.is_file():
        with tarfile.open(hyps) as tar:
            members = [m for m in tar.getmembers() if m.isfile()
                       and m.name.split("/", 1)[0] in kept]
            tar.extractall(out, members=members, filter="data")
    return kept


def weights_only_base(base: Path, out: Path) -> Path:
    """``base``'s config, vocabulary, encoded data and best weights in ``out``."""
    best = json.loads((base / "checkpoints" / "best.json").read_text())["dir"]
    ckpt = out / "checkpoints" / best
    ckpt.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "spm.model", "spm.vocab"):
        shutil.copy2(base / name, out / name)
    shutil.copytree(base / "data", out / "data", dirs_exist_ok=True)
    shutil.copy2(base / "checkpoints" / "best.json", out / "checkpoints" / "best.json")
    shutil.copy2(base / "checkpoints" / best / "model.safetensors", ckpt / "model.safetensors")
    state = json.loads((base / "checkpoints" / best / "state.json").read_text())
    state["files"] = {k: v for k, v in (state.get("files") or {}).items()
                      if k == "model.safetensors"}
    (ckpt / "state.json").write_text(json.dumps(state))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".gpu"))
    parser.add_argument("--base", type=Path, default=Path("runs/multi30k_de_en_60min"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data/multi30k"))
    args = parser.parse_args(argv)
    if not (args.base / "checkpoints" / "best.json").is_file():
        parser.error(f"{args.base}: no checkpoints/best.json (the base run to fine-tune)")
    if not (args.data / "train.de").is_file():
        parser.error(f"{args.data}: no train.de (the Multi30k folder)")
    shutil.rmtree(args.out, ignore_errors=True)
    shutil.copytree(args.data, args.out / "data" / "multi30k")
    weights_only_base(args.base, args.out / "base")
    for name, evidence in EVIDENCE.items():
        kept = resume_folder(Path(evidence), args.out / "resume" / name)
        print(f"{name}: {len(kept)} finished runs from {evidence}")
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {size / 2**20:.1f} MiB (the device call carries at most 64 MiB with the "
          f"working tree)")


if __name__ == "__main__":
    main()
