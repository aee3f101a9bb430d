"""Long poll: the controller publishes fine-grained keys; routers and proxies listen.

``LongPollHost`` lives in the controller actor (pure asyncio); ``LongPollClient`` runs in
every process that routes requests and keeps its subscribed keys current, surviving
controller restarts.
"""

from serveplane.long_poll.client import LongPollClient, Subscription
from serveplane.long_poll.host import (
    LONG_POLL_TIMEOUT,
    LongPollHost,
    LongPollTimeout,
    UpdatedObject,
    snapshot_at_least,
)

__all__ = ["LONG_POLL_TIMEOUT", "LongPollClient", "LongPollHost", "LongPollTimeout", "Subscription",
           "UpdatedObject", "snapshot_at_least"]
