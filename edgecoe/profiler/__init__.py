"""Device profiles (schema now; the measuring profiler comes with issue 4)."""

from edgecoe.profiler.schema import ArchitectureCost, DeviceProfile, ProcessorProfile, ProfileError, load_profile

__all__ = ["ArchitectureCost", "DeviceProfile", "ProcessorProfile", "ProfileError", "load_profile"]
