"""The pure broker core: routing, subscriptions, acks, transactions and limits."""

from ._actions import Action as Action
from ._actions import Close as Close
from ._actions import DestinationActive as DestinationActive
from ._actions import PrincipalActive as PrincipalActive
from ._actions import SessionId as SessionId
from ._actions import Write as Write
from ._broker import QUEUE_PREFIX as QUEUE_PREFIX
from ._broker import USER_KEY_PREFIX as USER_KEY_PREFIX
from ._broker import USER_PREFIX as USER_PREFIX
from ._broker import Broker as Broker
from ._broker import user_key as user_key
from ._limits import DEFAULT_MAX_QUEUE_BACKLOG as DEFAULT_MAX_QUEUE_BACKLOG
from ._limits import DEFAULT_MAX_SUBSCRIPTIONS as DEFAULT_MAX_SUBSCRIPTIONS
from ._limits import DEFAULT_MAX_TRANSACTION_FRAMES as DEFAULT_MAX_TRANSACTION_FRAMES
from ._limits import DEFAULT_MAX_TRANSACTIONS as DEFAULT_MAX_TRANSACTIONS
from ._limits import DEFAULT_MAX_UNACKED as DEFAULT_MAX_UNACKED
from ._limits import Limits as Limits

__all__ = [
    "DEFAULT_MAX_QUEUE_BACKLOG",
    "DEFAULT_MAX_SUBSCRIPTIONS",
    "DEFAULT_MAX_TRANSACTIONS",
    "DEFAULT_MAX_TRANSACTION_FRAMES",
    "DEFAULT_MAX_UNACKED",
    "QUEUE_PREFIX",
    "USER_KEY_PREFIX",
    "USER_PREFIX",
    "Action",
    "Broker",
    "Close",
    "DestinationActive",
    "Limits",
    "PrincipalActive",
    "SessionId",
    "Write",
    "user_key",
]
