"""The nightly refresh: new profiles only for users whose train history changed.

The LM, codebooks and surrogate of the base profile stay frozen, so a code keeps its
meaning and a deployed CTR model can read the refreshed bank unchanged.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from userip.atomic import publish_dir
from userip.config import ProfileConfig
from userip.dataprep.changes import changed_users
from userip.profile_infer.api import infer
from userip.profile_infer.layout import STAGE, ProfileMeta

log = logging.getLogger(__name__)


def refresh_profiles(cfg: ProfileConfig, base_profile: Path, data_dir: Path,
                     out_dir: Path) -> list[str]:
    """Publish to ``out_dir`` the base profile with changed users re-inferred.

    Returns the refreshed user ids (empty: nothing changed and nothing is published).
    Work happens in ``<out_dir>.work`` so that a killed refresh resumes from its
    checkpoints instead of starting over.
    """
    base_profile, data_dir, out_dir = Path(base_profile), Path(data_dir), Path(out_dir)
    old_data = Path(ProfileMeta.read(base_profile).data_dir)
    users = changed_users(old_data, data_dir)
    log.info("refresh: %d users with a new or changed history since %s", len(users), old_data)
    if not users:
        return []
    work = out_dir.with_name(out_dir.name + ".work")
    if not work.exists():
        staging = work.with_name(work.name + ".copying")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(base_profile, staging)
        staging.rename(work)
    users_file = work.with_name(work.name + ".users.txt")
    users_file.write_text("\n".join(users) + "\n")
    infer(cfg, data_dir, work, users_file=users_file)
    publish_dir(work, out_dir, STAGE)
    users_file.unlink()
    return users
