"""Offline profiler (``edgecoe profile``) and the device-profile schema."""

from edgecoe.profile import (
    Allocation,
    ArchitectureCost,
    DeviceInfo,
    DeviceProfile,
    ProcessorProfile,
    ProfileError,
    load_profile,
    save_profile,
)

__all__ = [
    "Allocation",
    "ArchitectureCost",
    "DeviceInfo",
    "DeviceProfile",
    "ProcessorProfile",
    "ProfileError",
    "load_profile",
    "save_profile",
]
