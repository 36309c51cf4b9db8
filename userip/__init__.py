"""userip: UserIP-Tuning as a pipeline, under one import name.

The ground floor (config, errors, hashing, atomic publish, sidecars) lives here; the stage
packages import as ``userip.dataprep``, ``userip.profile_infer``, ``userip.quantize``,
``userip.feature_bank``, ``userip.downstream``, ``userip.baselines``, ``userip.tasks`` and
``userip.flows``, and the CLI as ``userip.cli``. The wheel installs them under ``userip/``
(``package-dir`` in pyproject.toml); a source checkout keeps them beside this folder, so
there this package's path also covers the checkout root.
"""

from pathlib import Path

__version__ = "0.1.0"

_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "flows").is_dir():
    __path__.append(str(_checkout))  # noqa: F821 -- a package's own __path__
