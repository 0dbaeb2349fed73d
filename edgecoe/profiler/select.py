"""Finding a device profile: by path, by name in ``device_profiles/``, or the best
match for this machine and package."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from edgecoe.errors import InvalidInputError
from edgecoe.package import Package
from edgecoe.profile import DeviceProfile, ProfileError, load_profile
from edgecoe.providers import PROVIDER_FOR_KIND


def profile_dirs() -> list[Path]:
    """Where named profiles live: ./device_profiles, then the source checkout's."""
    here = Path(__file__).resolve().parents[2] / "device_profiles"
    dirs = [Path.cwd() / "device_profiles"]
    if here not in dirs:
        dirs.append(here)
    return dirs


def resolve_profile(name_or_path: str | Path) -> tuple[DeviceProfile, Path]:
    """Load a profile given as a path or as a name in ``device_profiles/``.

    Raises:
        ProfileError: the file is invalid. InvalidInputError: nothing by that name.
    """
    path = Path(name_or_path)
    if path.is_file():
        return load_profile(path), path
    for folder in profile_dirs():
        candidate = folder / f"{name_or_path}.json"
        if candidate.is_file():
            return load_profile(candidate), candidate
    known = sorted({p.stem for d in profile_dirs() if d.is_dir() for p in d.glob("*.json")})
    raise InvalidInputError(f"no device profile {str(name_or_path)!r} (a file, or one of {known})")


@dataclass(frozen=True)
class Match:
    profile: DeviceProfile
    path: Path
    score: int
    reason: str


def best_profile(pkg: Package) -> Match | None:
    """The measured profile that best fits this machine and package, or None.

    A candidate must have device info matching this machine (architecture and
    core count), offer only providers this onnxruntime has, and hold costs for
    every architecture of the package. Profiles measured on this package win.
    """
    available = set(ort.get_available_providers())
    archs = {e.architecture for e in pkg.experts.values()}
    best: Match | None = None
    for folder in profile_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            try:
                profile = load_profile(path)
            except ProfileError:
                continue
            device = profile.device
            if device is None or device.machine != platform.machine() or device.cpu_count != (os.cpu_count() or 1):
                continue
            if any(PROVIDER_FOR_KIND[p.kind] not in available for p in profile.processors):
                continue
            kinds = {p.kind for p in profile.processors}
            if any(profile.cost(a, k) is None for a in archs for k in kinds):
                continue
            score = 2 if profile.allocation is not None and profile.allocation.package == pkg.name else 1
            reason = ("measured on this machine type for this package" if score == 2
                      else "measured on this machine type; covers the package's architectures")
            if best is None or score > best.score:
                best = Match(profile, path, score, reason)
    return best
