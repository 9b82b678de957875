"""Who wrote a checkpoint's training state: an HMAC with this user's key, checked before it is loaded.

The training state is pickled (DCP keeps its metadata as a pickle; DeepSpeed's files are torch pickles),
so loading it runs whatever code its author put there. Every save signs the state's files (SHA-256 of
each) with a key only this user can read (`~/.config/vlstack/checkpoint.key`, made on first use, mode
0600; `VLSTACK_KEY_DIR` moves it); a resume checks the signature and refuses a checkpoint this user did
not write unless the caller trusts it explicitly. The weights a model loads for inference are
safetensors and need no trust.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from vlstack.checkpoint import COMPLETE
from vlstack.errors import CheckpointError

logger = logging.getLogger(__name__)
SIGNATURE = "training_state.sig"
KEY_DIR_ENV = "VLSTACK_KEY_DIR"


def sign_training_state(directory: Path) -> None:
    """Write `directory/training_state.sig`: this user's HMAC of every other file of the checkpoint."""
    (directory / SIGNATURE).write_text(_mac(directory), encoding="utf-8")


def check_signature(directory: Path, trust: bool) -> None:
    """Refuse (CheckpointError) a checkpoint whose training state this user's key did not sign, unless
    `trust`; then it loads, with a warning."""
    path = directory / SIGNATURE
    signed = path.is_file() and hmac.compare_digest(path.read_text(encoding="utf-8").strip(), _mac(directory))
    if signed:
        return
    problem = "has no signature" if not path.is_file() else "was changed or signed with another key"
    if not trust:
        raise CheckpointError(
            f"the training state in {directory} {problem}: it was not written by this user's runs. It is pickled "
            "(DCP metadata, DeepSpeed files), so loading it runs code its author chose. If you trust where it "
            "came from, resume with --trust-checkpoint (trust=True); to use only its weights, which are "
            "safetensors, start a new run from the checkpoint instead")
    logger.warning("resuming from %s, whose training state %s: loading it runs pickled code from its author",
                   directory, problem)


def _mac(directory: Path) -> str:
    digest = hmac.new(_key(), digestmod=hashlib.sha256)
    unsigned = {SIGNATURE, COMPLETE}  # the marker is written after signing, when the directory is committed
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in unsigned):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        file_hash = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                file_hash.update(chunk)
        digest.update(file_hash.digest())
    return digest.hexdigest()


def _key() -> bytes:
    folder = Path(os.environ.get(KEY_DIR_ENV) or Path.home() / ".config" / "vlstack")
    path = folder / "checkpoint.key"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(descriptor, "w") as f:
                f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()
