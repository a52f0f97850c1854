"""The optional Redis tier shared by every instance (``[redis]``, ``CHATD_REDIS_URL``).

`RedisTier` (client.py) owns the connection pool, the key prefix and the up/down state; each
feature built on it keeps working without it (never a single point of failure): the shared
profile cache (`chatd.profiles.shared`) and the shared rate limiter (ratelimit.py). Only this
package imports redis-py (import-linter contract ``redis-in-redis-tier-only``).
"""

from chatd.redis_tier.batch import Script, ScriptBatcher
from chatd.redis_tier.client import RedisTier
from chatd.redis_tier.errors import RedisUnavailable
from chatd.redis_tier.ratelimit import SharedRateLimiter

__all__ = ["RedisTier", "RedisUnavailable", "Script", "ScriptBatcher", "SharedRateLimiter"]
