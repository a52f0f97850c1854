"""The RabbitMQ bridge: the only package that imports pika.

`RabbitBridge` is the outbox sink and relay between instances; `chatd.bridge.keys` derives
routing keys and drops duplicates; `chatd.bridge.amqp` is the pika thread.
"""

from chatd.bridge.keys import Dedupe, routing_key
from chatd.bridge.relay import PublishRefused, RabbitBridge

__all__ = ["Dedupe", "PublishRefused", "RabbitBridge", "routing_key"]
