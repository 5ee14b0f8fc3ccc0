"""The last finished epoch of a training run, on local disk, so an interrupted run can go on in place.

A checkpoint holds the whole module (pruned models change shape), optimizer, scheduler, scaler, every
RNG state, the epoch, the epoch history and the training fingerprint (the config values that must match
for a resume to reach the same weights). The energy ledger lives beside it in an append-only journal
(`ledger.jsonl`), written as each phase is measured: the one record of what every sitting spent."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from greenstudy.errors import ConfigError
from greenstudy.measure.ledger import PhaseJournal, read_journal, redo_unsaved_epochs, write_journal

FINGERPRINT_FIELDS = (
    "model", "dataset", "epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "seed",
    "train_subset", "val_size", "resolution", "channels_last", "prune_ratio", "prune_importance",
    "finetune_epochs", "amp_dtype", "device", "test_subset", "calib_batches", "compile", "target_acc1", "stop_at_target",
)


# several-device settings: in the fingerprint only when not the default, so one-device checkpoints made before
# they existed still resume (Checkpointer.load compares both ways: resume works with the same `devices` only)
DEVICE_FIELDS = {"devices": 1, "sync_bn": False}


def fingerprint(cfg: object) -> dict[str, object]:
    """The config values a resumed run must share with the interrupted one."""
    found = {name: getattr(cfg, name) for name in FINGERPRINT_FIELDS}
    found.update({name: getattr(cfg, name) for name, usual in DEVICE_FIELDS.items() if getattr(cfg, name, usual) != usual})
    return found


def rng_state(generator: torch.Generator) -> dict[str, object]:
    state = {
        "python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
    }
    if generator.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(generator.device)
    return state


def restore_rng(state: dict[str, object], generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], generator.device)


@dataclass
class Checkpointer:
    """Where one run's checkpoint lives (`<checkpoint_dir>/<run_id>/last.pt`)."""

    folder: Path

    @property
    def path(self) -> Path:
        return self.folder / "last.pt"

    def exists(self) -> bool:
        return self.path.is_file()

    def _save_atomically(self, obj: object, path: Path) -> None:
        """A crash mid-write leaves the previous file intact."""
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        torch.save(obj, partial)
        os.replace(partial, path)

    def save(self, state: dict[str, object]) -> None:
        self._save_atomically(state, self.path)

    def load(self, expected: dict[str, object]) -> dict[str, object]:
        """The checkpoint, after checking it was made with the same training settings."""
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear line
            raise ConfigError(f"checkpoint {self.path} is unreadable ({type(exc).__name__}): delete it to start over") from exc
        stored = state.get("fingerprint", {})
        diff = [f"{k}={stored.get(k)!r} (now {v!r})" for k, v in expected.items() if stored.get(k) != v]
        diff += [f"{k}={stored[k]!r} (now {DEVICE_FIELDS[k]!r})" for k in DEVICE_FIELDS if k in stored and k not in expected]
        if diff:
            raise ConfigError(f"checkpoint {self.path} was made with other settings: {', '.join(diff)}")
        return state

    @property
    def journal_path(self) -> Path:
        """Every phase of the run, every sitting, appended as measured (see PhaseJournal)."""
        return self.folder / "ledger.jsonl"

    def saved_epoch(self) -> int:
        """The last epoch the checkpoint holds (0 without one)."""
        if not self.exists():
            return 0
        return int(torch.load(self.path, map_location="cpu", weights_only=False)["epoch"])

    def open_journal(self, resume: dict[str, object] | None) -> PhaseJournal:
        """This sitting's ledger: every phase of the earlier sittings (epochs after the checkpoint's last one
        become `interrupted`, rewritten so a later sitting sees them so), stamped with the next sitting number."""
        phases = list(resume.get("ledger", [])) if resume else []  # where checkpoints before the journal kept it
        if self.journal_path.is_file():
            phases = read_journal(self.journal_path)
        redo_unsaved_epochs(phases, int(resume["epoch"]) if resume else 0)
        if resume is None:  # no checkpoint: the earlier sittings' setup (prune, calibrate, compile) is done again
            for phase in phases:
                if phase.kind == "setup":
                    phase.kind = "interrupted"
        write_journal(self.journal_path, phases)
        return PhaseJournal(phases, self.journal_path, max((p.sitting for p in phases), default=0) + 1)

    def remove(self) -> None:
        """Drop the checkpoint once its run has finished (the model is logged to MLflow)."""
        for path in (self.path, self.journal_path, *(p.with_suffix(".partial") for p in (self.path, self.journal_path))):
            path.unlink(missing_ok=True)
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()
