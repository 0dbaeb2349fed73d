"""Expert cache (mechanism) and eviction policies (chosen by name)."""

from edgecoe.cache.cache import (
    Acquired,
    CacheLoadError,
    CacheStats,
    EntryState,
    EvictResult,
    ExpertCache,
)
from edgecoe.cache.policies import (
    EVICTION_POLICIES,
    BeladyPolicy,
    CoservePolicy,
    EvictionPolicy,
    FifoPolicy,
    LruPolicy,
    create_eviction_policy,
)

__all__ = [
    "EVICTION_POLICIES",
    "Acquired",
    "BeladyPolicy",
    "CacheLoadError",
    "CacheStats",
    "CoservePolicy",
    "EntryState",
    "EvictResult",
    "EvictionPolicy",
    "ExpertCache",
    "FifoPolicy",
    "LruPolicy",
    "create_eviction_policy",
]
