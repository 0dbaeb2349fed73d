"""The embedding API's entry point: load a package and start serving it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgecoe.config import RuntimeConfig
from edgecoe.package import Package, load_package
from edgecoe.profile import DeviceProfile, load_profile
from edgecoe.runtime import Runtime
from edgecoe.transforms import Transform


def load(package: str | Path | Package, *, profile: str | Path | DeviceProfile | None = None,
         policy: str = "edgecoe", config: RuntimeConfig | None = None,
         transforms: Mapping[str, Transform] | None = None, **overrides: Any) -> Runtime:
    """Load a package and start a runtime for it.

    Args:
        package: package directory (or a loaded :class:`Package`).
        profile: device profile (path or object); default: this machine's defaults.
        policy: preset name, used when ``config`` is not given.
        config: full configuration; ``overrides`` replace its fields.
        transforms: the functions for the transforms the package names (name -> function;
            :mod:`edgecoe.transforms`). A package holds no code: these are the application's.

    Raises:
        PackageError, ProfileError, InvalidInputError, ProviderUnavailableError.
    """
    config = config or RuntimeConfig(policy=policy)
    if overrides:
        config = replace(config, **overrides)
    config.validate()
    pkg = package if isinstance(package, Package) else load_package(package, verify=config.verify)
    prof = load_profile(profile) if isinstance(profile, (str, Path)) else profile
    return Runtime(pkg, config=config, profile=prof, transforms=transforms)
