"""The run directory, and checkpoints in it: safetensors + JSON, written atomically.

Layout of ``runs/NAME``::

    config.yaml            resolved config of the run
    spm.model, spm.vocab   joint SentencePiece model
    data/                  encoded splits (train/, valid/: memory-mapped shards) + prepare.json
    checkpoints/step_N/    model.safetensors, optim.safetensors, state.json
    checkpoints/last.json  pointer to the newest complete checkpoint (replaced atomically)
    checkpoints/best.json  pointer to the checkpoint with the best validation BLEU
    log.jsonl              one JSON object per log interval / validation
    eval/                  hypotheses and scores

A checkpoint directory is written under a temporary name and renamed when complete; the
pointer files are replaced with ``os.replace``. A kill at any moment leaves the previous
checkpoint intact. Weights are never unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from . import config as config_mod
from .config import Config
from .verify import CheckpointError, digests, nonfinite, verify

log = logging.getLogger(__name__)
_UMASK = os.umask(0o022)  # read once at import (setting it back at once): umask has no getter
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Temp file + fsync + rename: a reader sees the old file or the new one, never half. The
    temp file's name is unique to this call, so that processes writing the same file at once
    (the lanes of a sweep writing its spec) each rename their own; the last rename wins."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a plain open: 0666 & ~umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class RunDir:
    """Paths of one run; the only place that knows the layout."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    spm_prefix = property(lambda self: self.path / "spm")
    spm_model = property(lambda self: self.path / "spm.model")
    data = property(lambda self: self.path / "data")
    checkpoints = property(lambda self: self.path / "checkpoints")
    log = property(lambda self: self.path / "log.jsonl")
    eval = property(lambda self: self.path / "eval")

    def load_config(self, overrides: list[str] | dict | None = None) -> Config:
        """The run's resolved config (``config.yaml``), with ``overrides``."""
        if not self.config.is_file():
            raise FileNotFoundError(f"{self.path}: not a run directory (no config.yaml)")
        return config_mod.load(self.config, overrides, migrate=migrate_renamed)

    def mkdirs(self) -> None:
        for p in (self.path, self.data, self.checkpoints, self.eval):
            p.mkdir(parents=True, exist_ok=True)

    def append_log(self, record: dict) -> None:
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read_log(self) -> list[dict]:
        """The log's records. A torn last line (a write cut short) is skipped with a warning;
        a damaged line elsewhere is an error naming file:line."""
        if not self.log.is_file():
            return []
        lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        records = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                if i < len(lines):
                    raise CheckpointError(f"{self.log}:{i}: not a JSON record") from None
                log.warning("%s:%d: skipping a torn last line (a write was cut short)",
                            self.log, i)
        return records

    def truncate_log(self, update: int) -> None:
        """Drop records written after ``update`` (a killed run resumes from its checkpoint)."""
        if self.log.is_file():
            keep = [r for r in self.read_log() if r.get("update", 0) <= update]
            atomic_write_text(self.log, "".join(json.dumps(r) + "\n" for r in keep))

    # ------------------------------------------------------------------ checkpoints
    def pointer(self, tag: str) -> Path | None:
        """Directory of the checkpoint named by ``tag`` (last / best), or None (no pointer,
        an unreadable one, or one naming a folder that is gone)."""
        ptr = self.checkpoints / f"{tag}.json"
        if not ptr.is_file():
            return None
        try:
            path = self.checkpoints / json.loads(ptr.read_text())["dir"]
        except (ValueError, KeyError, TypeError):
            log.warning("%s: unreadable pointer, ignored", ptr)
            return None
        return path if (path / "model.safetensors").is_file() else None

    def newest_verified(self, exclude: Path | None = None) -> Path | None:
        """The newest ``step_*`` checkpoint that verifies (``gapless.verify``)."""
        for path in reversed(self.steps()):
            if path != exclude and verify(path) is None:
                return path
        return None

    def resolve(self, tag_or_dir: str | Path) -> Path:
        """The checkpoint folder of a tag (best, last, averaged, ...) or a folder, verified. A
        damaged or missing ``last`` falls back to the newest checkpoint that verifies, saying
        so; any other damaged checkpoint is an error that names the file and the newest intact
        one."""
        path = Path(tag_or_dir)
        if not (path / "model.safetensors").is_file():
            path = self.pointer(str(tag_or_dir))
            if path is None and str(tag_or_dir) == "best":
                path = self.pointer("last")  # no validation yet: the newest is the best known
        problem = f"no checkpoint '{tag_or_dir}'" if path is None else verify(path)
        if problem is None:
            return path
        fallback = self.newest_verified(exclude=path)
        if str(tag_or_dir) == "last" and fallback is not None:
            log.warning("%s; using %s, the newest checkpoint that verifies", problem, fallback)
            return fallback
        offer = f"; the newest intact checkpoint is {fallback}" if fallback else ""
        raise CheckpointError(f"{self.checkpoints}: {problem}{offer}")

    def save(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        state: dict,
        tags: tuple[str, ...] = ("last",),
        keep_last: int = 2,
    ) -> Path:
        """Write checkpoint ``step_<update>`` atomically and point ``tags`` at it."""
        name = f"step_{state['update']:08d}"
        try:
            return self._write(model, optimizer, state, name, tags, keep_last)
        except (OSError, SafetensorError) as exc:  # disk full, permissions: name it
            shutil.rmtree(self.checkpoints / f".{name}.tmp", ignore_errors=True)
            raise CheckpointError(f"{self.checkpoints / name}: could not write the checkpoint "
                                  f"({exc}); the earlier checkpoints are intact") from None

    def _write(self, model, optimizer, state: dict, name: str, tags: tuple[str, ...],
               keep_last: int) -> Path:
        final = self.checkpoints / name
        tmp = self.checkpoints / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        bad = nonfinite(dict(model.named_parameters()))
        if bad:
            raise CheckpointError(f"refusing to save non-finite weights ({', '.join(bad[:5])})"
                                  f"; the checkpoints in {self.checkpoints} are kept")
        save_model(model, str(tmp / "model.safetensors"))
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer)
            tensors.update(_rng_tensors())
            save_file(tensors, str(tmp / "optim.safetensors"))
            state = {**state, "optimizer": meta, "python_random": _py_random_state()}
        state = {**state, "files": digests(tmp)}
        (tmp / "state.json").write_text(json.dumps(state))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for tag in tags:
            atomic_write_text(self.checkpoints / f"{tag}.json", json.dumps({"dir": name}))
        self._prune(keep_last)
        return final

    def _prune(self, keep_last: int) -> None:
        steps = sorted(p for p in self.checkpoints.glob("step_*") if p.is_dir())
        pinned = {self.pointer(t) for t in ("last", "best")}
        for old in steps[:-keep_last] if keep_last > 0 else []:
            if old not in pinned:
                shutil.rmtree(old, ignore_errors=True)
        # temp dirs of saves a kill interrupted (at steps that may never be saved again)
        for stale in self.checkpoints.glob(".step_*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)

    def discard_checkpoints(self) -> list[str]:
        """Remove every checkpoint, pointer and the log (a deliberate start over); returns
        what was there."""
        gone = sorted(p.name for p in self.checkpoints.glob("*")) if self.checkpoints.is_dir() \
            else []
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        if self.log.is_file():
            gone.append(self.log.name)
            self.log.unlink()
        return gone

    def steps(self) -> list[Path]:
        """The saved ``step_*`` checkpoints, oldest first."""
        return sorted(p for p in self.checkpoints.glob("step_*")
                      if (p / "model.safetensors").is_file())

    def choose_steps(self, last: int | None = None, updates: list[int] | None = None
                     ) -> list[Path]:
        """The ``step_*`` checkpoints of ``updates``, or the ``last`` N; an error names what
        is missing."""
        steps = {int(p.name.split("_")[1]): p for p in self.steps()}
        if updates:
            missing = sorted(set(updates) - steps.keys())
            if missing:
                raise FileNotFoundError(f"{self.checkpoints}: no checkpoint of update(s) "
                                        f"{missing} (have {sorted(steps)})")
            return [steps[u] for u in sorted(set(updates))]
        if last is None or not 1 <= last <= len(steps):
            raise FileNotFoundError(f"{self.checkpoints}: cannot average the last {last} of "
                                    f"{len(steps)} checkpoints")
        return [steps[u] for u in sorted(steps)[-last:]]

    def average(self, sources: list[Path], name: str) -> Path:
        """Write the element-wise mean of the weights of ``sources`` (checkpoint folders) as
        checkpoint ``name`` (atomically; tag ``name`` points at it) and return its folder.
        Integer tensors (counters) are taken from the newest source."""
        if not sources:
            raise FileNotFoundError(f"{self.checkpoints}: no checkpoints to average")
        total: dict[str, torch.Tensor] = {}
        for src in sources:
            for key, value in load_file(str(src / "model.safetensors")).items():
                if value.is_floating_point():
                    total[key] = total.get(key, 0) + value.double()
                else:
                    total[key] = value
        first = load_file(str(sources[0] / "model.safetensors"))
        mean = {k: (v / len(sources)).to(first[k].dtype) if v.is_floating_point() else v
                for k, v in total.items()}
        with open(sources[0] / "model.safetensors", "rb") as f:  # keep the tie metadata
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        tmp = self.checkpoints / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(mean, str(tmp / "model.safetensors"), metadata=header.get("__metadata__"))
        states = [json.loads((src / "state.json").read_text()) for src in sources]
        (tmp / "state.json").write_text(json.dumps({
            "update": states[-1]["update"], "averaged_from": [src.name for src in sources],
            "averaged_updates": [st["update"] for st in states]}))
        final = self.checkpoints / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        atomic_write_text(self.checkpoints / f"{name}.json", json.dumps({"dir": name}))
        return final

    def load_weights(self, model: torch.nn.Module, tag_or_dir: str | Path = "best") -> Path:
        """Verified, finite weights of a checkpoint (``resolve``) into ``model``."""
        path = self.resolve(tag_or_dir)
        file = path / "model.safetensors"
        try:
            missing, unexpected = load_model(model, str(file), strict=False)
        except (SafetensorError, OSError, RuntimeError) as exc:  # truncated or garbled
            raise CheckpointError(f"{file}: unreadable ({exc})") from None
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: weights do not fit the model (missing {missing}, unexpected {unexpected})"
            )
        bad = nonfinite(dict(model.named_parameters()))
        if bad:
            raise CheckpointError(f"{file}: non-finite weights in {', '.join(bad[:5])}")
        return path

    def load_optimizer(self, optimizer, tag: str = "best") -> dict:
        """Adam moments of checkpoint ``tag`` into ``optimizer`` (fine-tuning that keeps the
        base's optimizer); returns that checkpoint's state.json."""
        path = self.pointer(tag)
        if path is None or not (path / "optim.safetensors").is_file():
            raise FileNotFoundError(f"{self.checkpoints}: no optimizer state for '{tag}'")
        state = json.loads((path / "state.json").read_text())
        _restore_optimizer(optimizer, load_file(str(path / "optim.safetensors")),
                           state["optimizer"])
        return state

    def save_rank_state(self, rank: int, update: int, strategy: dict) -> None:
        """A non-zero DDP rank's own state at ``update``: its RNG (its dropout masks) and its
        strategy's state (e.g. the oracles cached for the sentences that rank saw)."""
        folder = self.checkpoints / "rng"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / f"rank{rank}.json",
                          json.dumps({"update": update, "strategy": strategy}))
        tmp = folder / f".rank{rank}.tmp"
        save_file({**_rng_tensors(), "update": torch.tensor([update])}, str(tmp))
        os.replace(tmp, folder / f"rank{rank}.safetensors")

    def restore_rank_state(self, rank: int, update: int) -> dict | None:
        """Restore the RNG that ``save_rank_state`` wrote for ``update`` and return the
        strategy state saved with it; None if absent or stale."""
        path = self.checkpoints / "rng" / f"rank{rank}.safetensors"
        if not path.is_file():
            return None
        tensors = load_file(str(path))
        if int(tensors["update"][0]) != update:
            return None
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        side = path.with_suffix(".json")
        saved = json.loads(side.read_text()) if side.is_file() else {}
        return saved.get("strategy", {}) if saved.get("update") == update else {}

    def load_training_state(self, model, optimizer) -> dict | None:
        """Restore weights, optimizer and RNG from ``last`` (or, when that pointer is missing
        or damaged, the newest checkpoint that verifies); None when the run has none."""
        if self.pointer("last") is None and not self.steps():
            return None
        path = self.resolve("last")
        self.load_weights(model, path)
        state = json.loads((path / "state.json").read_text())
        tensors = load_file(str(path / "optim.safetensors"))
        _restore_optimizer(optimizer, tensors, state.pop("optimizer"))
        _restore_rng(tensors, state.pop("python_random"))
        state.pop("files", None)
        return state


def migrate_renamed(data: dict) -> dict:
    """A config saved by an older gapless with the renamed schedule parameters in their new
    names (``strategy.k`` goes to the parameter of the schedule the run used)."""
    old = dict(data.get("strategy") or {})
    if not {"k", "c", "mu"} & old.keys():
        return data
    name = old.get("schedule", "auto")
    if name == "auto":
        name = "inverse_sigmoid" if old.get("name") == "scheduled_sampling" else "or_nmt"
    k_field = {"constant": "constant_p", "linear": "linear_start", "exponential": "exp_base",
               "inverse_sigmoid": "sigmoid_k"}.get(name)
    if "k" in old and k_field is not None:
        old.setdefault(k_field, old["k"])
    for before, after in (("c", "linear_slope"), ("mu", "or_nmt_mu")):
        if before in old:
            old.setdefault(after, old[before])
    for before in ("k", "c", "mu"):
        old.pop(before, None)
    return {**data, "strategy": old}


def _flatten_optimizer(optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, pstate in sd["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    # saved groups carry the implementation flags of the optimizer that wrote them; keep this
    # one's (the same update): a checkpoint of the looping Adam resumes fused (train.py)
    built = {k: optimizer.defaults[k] for k in ("fused", "foreach") if k in optimizer.defaults}
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    for group in optimizer.param_groups:
        group.update(built)


def _rng_tensors() -> dict:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["rng.cuda"] = torch.cuda.get_rng_state()
    return out


def _py_random_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _restore_rng(tensors: dict, py_state: list) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    random.setstate((py_state[0], tuple(py_state[1]), py_state[2]))
