"""The study's shared files in an artifact store, with the local folder as a cache in front.

A study spread over hosts without a shared disk needs somewhere every worker can read what another
wrote: the epoch checkpoints of running trials (a retried trial resumes from them), the finalists'
checkpoints and outputs, the stage-1 encoders and their features, the exported best model.

The store is MLflow's artifact repository layer (``--artifacts URI``), chosen over Optuna's
artifact stores because it covers more places with one URI scheme each: the tracking server's
proxied artifacts (``mlflow-artifacts://HOST:PORT/PATH``: plain HTTP to a server the workers
already talk to, no cloud credentials on the workers, no shared disk), S3, GCS, Azure Blob, HDFS
and local or mounted folders (``file:///PATH``). Optuna's stores cover S3, GCS and a local folder
only. Objects mirror the local layout: ``<study>/running/trial_3.pt``, ``cache/<key>/...``.

Writes go to the local file first (atomically, as before), then to the store; reads use the local
file when it is there and fetch it from the store when it is not. A store that cannot be reached
while a study runs costs a warning, never the trial: the local copy stays usable on this host.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from autofuse._util import first_line, mask_url
from autofuse.errors import ConfigError

log = logging.getLogger(__name__)

#: URI schemes MLflow's artifact repositories handle (see ``mlflow.store.artifact``)
SCHEMES = ("file", "mlflow-artifacts", "http", "https", "s3", "gs", "wasbs", "abfss", "hdfs")


class ArtifactStore:
    """Files under ``uri`` (an MLflow artifact-repository URI), addressed by relative paths."""

    def __init__(self, uri: str) -> None:
        parts = urlsplit(uri)
        if parts.scheme not in SCHEMES:
            raise ConfigError(
                f"--artifacts {mask_url(uri)!r}: not an artifact store URI (schemes: {', '.join(SCHEMES)})"
            )
        self.uri = uri.rstrip("/")
        self._repo = None

    def child(self, prefix: str) -> ArtifactStore:
        """The store under ``prefix`` (e.g. one study's folder)."""
        return ArtifactStore(f"{self.uri}/{prefix.strip('/')}")

    @property
    def repo(self):
        if self._repo is None:
            # lazy: MLflow takes seconds to import, and only studies with --artifacts need it
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            parts = urlsplit(self.uri)
            tracking = None
            if parts.scheme == "mlflow-artifacts" and parts.netloc:
                tracking = f"http://{parts.netloc}"  # the server that proxies the artifacts
            try:
                self._repo = get_artifact_repository(self.uri, tracking_uri=tracking)
            except Exception as e:  # MlflowException: unknown scheme, missing plugin, bad URI
                raise ConfigError(f"--artifacts {mask_url(self.uri)}: {first_line(e)}") from None
        return self._repo

    def check(self) -> None:
        """Fail now, with one line, if the store cannot be listed (wrong host, no server)."""
        parts = urlsplit(self.uri)
        if parts.scheme == "mlflow-artifacts" and parts.netloc:
            # MLflow's HTTP client retries an unreachable server for minutes; ask once
            try:
                urllib.request.urlopen(f"http://{parts.netloc}/health", timeout=10).close()
            except OSError as e:
                raise ConfigError(
                    f"--artifacts {mask_url(self.uri)}: cannot reach it ({e})"
                ) from None
        try:
            self.repo.list_artifacts("")
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(
                f"--artifacts {mask_url(self.uri)}: cannot reach it ({first_line(e)})"
            ) from None

    # ---- writing -------------------------------------------------------------------------------
    def put(self, local: Path, rel: str) -> bool:
        """Upload the file ``local`` as ``rel``; False (with a warning) when the store failed."""
        rel = rel.strip("/")
        folder, name = os.path.split(rel)
        try:
            if name == local.name:
                self.repo.log_artifact(str(local), folder or None)
            else:  # the repositories name an object after its file
                with tempfile.TemporaryDirectory() as tmp:
                    staged = Path(tmp) / name
                    shutil.copy2(local, staged)
                    self.repo.log_artifact(str(staged), folder or None)
            return True
        except Exception as e:  # network, permissions, server errors: keep the local copy
            log.warning(
                "artifact store %s: cannot upload %s (%s)", mask_url(self.uri), rel, first_line(e)
            )
            return False

    def put_dir(self, local: Path, rel: str) -> bool:
        """Upload every file under the folder ``local`` to ``rel/``."""
        try:
            self.repo.log_artifacts(str(local), rel.strip("/") or None)
            return True
        except Exception as e:
            log.warning(
                "artifact store %s: cannot upload %s/ (%s)", mask_url(self.uri), rel, first_line(e)
            )
            return False

    def delete(self, rel: str) -> None:
        """Remove ``rel`` where the store supports deleting (best effort)."""
        try:
            self.repo.delete_artifacts(rel.strip("/"))
        except Exception as e:  # some repositories cannot delete; a stale object costs space only
            log.debug(
                "artifact store %s: cannot delete %s (%s)", mask_url(self.uri), rel, first_line(e)
            )

    # ---- reading -------------------------------------------------------------------------------
    def names(self, folder: str) -> list[str]:
        """The names of the files and folders directly under ``folder`` ([] when absent or when
        the store cannot be listed)."""
        try:
            return [os.path.basename(f.path) for f in self.repo.list_artifacts(folder.strip("/"))]
        except Exception as e:
            log.debug(
                "artifact store %s: cannot list %s (%s)", mask_url(self.uri), folder, first_line(e)
            )
            return []

    def exists(self, rel: str) -> bool:
        folder, name = os.path.split(rel.strip("/"))
        try:
            return any(os.path.basename(f.path) == name for f in self.repo.list_artifacts(folder))
        except Exception:
            return False

    def fetch(self, rel: str, dst: Path) -> bool:
        """Download the file ``rel`` to ``dst`` (atomically); False when the store lacks it."""
        if not self.exists(rel):
            return False
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
                got = Path(self.repo.download_artifacts(rel.strip("/"), tmp))
                os.replace(got, dst)
            return True
        except Exception as e:
            log.warning(
                "artifact store %s: cannot download %s (%s)", mask_url(self.uri), rel, first_line(e)
            )
            return False

    def fetch_dir(self, rel: str, dst: Path) -> bool:
        """Download the folder ``rel`` to ``dst`` (replaced as a whole); False when absent."""
        folder, name = os.path.split(rel.strip("/"))
        try:
            listed = [os.path.basename(f.path) for f in self.repo.list_artifacts(folder)]
        except Exception:
            return False
        if name not in listed:
            return False
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
                got = Path(self.repo.download_artifacts(rel.strip("/"), tmp))
                if dst.exists():
                    shutil.rmtree(dst)
                os.replace(got, dst)
            return True
        except Exception as e:
            log.warning(
                "artifact store %s: cannot download %s/ (%s)",
                mask_url(self.uri),
                rel,
                first_line(e),
            )
            return False


def open_artifacts(uri: str | None) -> ArtifactStore | None:
    """The store for ``--artifacts URI`` (None: local disk only); a bare path means ``file://``."""
    if not uri:
        return None
    if "://" not in uri:
        uri = Path(uri).expanduser().resolve().as_uri()
    return ArtifactStore(uri)
