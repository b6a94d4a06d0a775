"""Where a study's files live, and whether a process that joins the study can reach them.

A study's trials leave files that later trials read: stage-1 encoders (weights and features),
running checkpoints, the fusion designs' and finalists' checkpoints. A process writes them under
its own ``--workdir``, and into the study's artifact store when it has one (``--artifacts``).
Two processes of one study with separate work folders and no store each see only their own
files: the second one's trials would then fail on the first one's stage-1 encoders.

So the process that creates a study records its *files home* (study attribute ``files_home``)
and leaves a marker with the same random id in its study folder (``trials/<study>/.files-home``).
A process that joins the study goes on only when it shares the files:

- both it and the study have an artifact store (what is not local is fetched from there), or
- its own study folder holds the marker with the study's id: the same folder, or a shared one
  mounted elsewhere (a network file system); paths and host names are not compared.

Otherwise it stops before it takes a trial, with one line naming ``--workdir`` and
``--artifacts``. No library does this: Optuna's storages know nothing of a worker's files.
"""

from __future__ import annotations

import logging
import socket
import uuid
from pathlib import Path
from typing import Any

import optuna

from autofuse._util import mask_url
from autofuse.errors import MissingFiles

log = logging.getLogger(__name__)

#: the study attribute and the marker file in the study folder
ATTR = "files_home"
MARKER = ".files-home"


def claim(study: optuna.Study, study_dir: Path, artifacts: str | None) -> None:
    """Make this process's study folder the files home of ``study`` (a new study, or one made by
    an autofuse that did not record it). The caller holds the study lock."""
    home = {
        "id": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "folder": str(Path(study_dir).resolve()),
        "artifacts": mask_url(artifacts) if artifacts else None,
    }
    Path(study_dir).mkdir(parents=True, exist_ok=True)
    (Path(study_dir) / MARKER).write_text(home["id"] + "\n")
    study.set_user_attr(ATTR, home)


def check(
    name: str, attrs: dict[str, Any], study_dir: Path, artifacts: str | None, who: str = "process"
) -> None:
    """Refuse to join study ``name`` (its user attributes ``attrs``) from a process whose files
    are not the study's (see the module docstring).

    Raises:
        MissingFiles: one line saying where the study's files are and what to pass.
    """
    home = attrs.get(ATTR)
    if not home:  # a study made before files homes were recorded: nothing to compare
        return
    if home.get("artifacts") and artifacts:
        return
    marker = Path(study_dir) / MARKER
    try:
        local = marker.read_text().strip()
    except OSError:
        local = None
    if local == home.get("id"):
        return
    where = f"{home.get('folder')} on host {home.get('host')}"
    if home.get("artifacts"):
        raise MissingFiles(
            f"study {name!r} keeps its files (stage-1 encoders, checkpoints, finalists) in the "
            f"artifact store {home['artifacts']} and under {where}; this {who} has neither "
            f"(its work folder: {Path(study_dir).parent.parent}): pass --artifacts "
            f"{home['artifacts']}, or the same --workdir (a shared folder)"
        )
    raise MissingFiles(
        f"study {name!r} keeps its files (stage-1 encoders, checkpoints, finalists) under "
        f"{where}, and this {who} cannot see them (its work folder: "
        f"{Path(study_dir).parent.parent}): give every process of the study the same --workdir "
        "(a shared folder), or start the study with an artifact store (--artifacts URI) and "
        "pass it to every process"
    )


def check_stored(
    storage: Any, name: str, study_dir: Path, artifacts: str | None, who: str = "process"
) -> None:
    """``check`` for study ``name`` of ``storage`` if it exists, reading only (a process refused
    here leaves no trace, not even a lock file); the caller checks again under the study lock."""
    try:
        st = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return
    check(name, st.user_attrs, study_dir, artifacts, who)


def join(study: optuna.Study, study_dir: Path, artifacts: str | None) -> None:
    """``check`` for a process that opens an existing study; a study without a files home gets
    this process's. The caller holds the study lock."""
    check(study.study_name, study.user_attrs, study_dir, artifacts)
    if not study.user_attrs.get(ATTR):
        claim(study, study_dir, artifacts)


__all__ = ["ATTR", "MARKER", "check", "check_stored", "claim", "join"]
