"""Broker core behaviour, observed through frames a client receives (no sockets)."""

from __future__ import annotations

from stomp import Command, Connect, Frame
from stomp.broker import Broker, Limits, PrincipalActive
from stomp.testing import Loopback, LoopbackClient


def bodies(client: LoopbackClient) -> list[bytes]:
    return [f.body for f in client.take() if f.command is Command.MESSAGE]


def test_topic_fans_out_to_every_subscriber() -> None:
    lb = Loopback()
    subs = [lb.client() for _ in range(3)]
    for i, sub in enumerate(subs):
        sub.send("SUBSCRIBE", {"id": f"s{i}", "destination": "/topic/t"})
    lb.client().send("SEND", {"destination": "/topic/t"}, b"hi")
    for i, sub in enumerate(subs):
        [message] = sub.take()
        assert message.body == b"hi"
        assert message.get("subscription") == f"s{i}"
        assert message.get("destination") == "/topic/t"
        assert message.get("content-length") == "2"
        assert message.get("message-id")
        assert message.get("ack") is None


def test_custom_headers_pass_through_and_broker_headers_do_not() -> None:
    lb = Loopback()
    sub = lb.client()
    sub.send("SUBSCRIBE", {"id": "1", "destination": "/topic/t"})
    lb.client().send(
        "SEND",
        {
            "destination": "/topic/t",
            "reply-to": "/queue/r",
            "x-app": "v",
            "content-type": "text/plain",
            "message-id": "forged",
            "subscription": "forged",
            "receipt": "r1",
        },
        b"x",
    )
    [message] = sub.take()
    assert message.get("reply-to") == "/queue/r"
    assert message.get("x-app") == "v"
    assert message.get("content-type") == "text/plain"
    assert message.get("message-id") != "forged"
    assert message.get("subscription") == "1"
    assert message.get("receipt") is None


def test_receipt_on_any_frame() -> None:
    lb = Loopback()
    client = lb.client()
    for command, headers in [
        ("SUBSCRIBE", {"id": "1", "destination": "/topic/t"}),
        ("SEND", {"destination": "/topic/other"}),
        ("BEGIN", {"transaction": "tx"}),
        ("ABORT", {"transaction": "tx"}),
        ("UNSUBSCRIBE", {"id": "1"}),
    ]:
        client.send(command, {**headers, "receipt": f"r-{command}"})
        [receipt] = client.take()
        assert receipt.command is Command.RECEIPT
        assert receipt.get("receipt-id") == f"r-{command}"


def test_queue_round_robin_between_consumers() -> None:
    lb = Loopback()
    a, b = lb.client(), lb.client()
    a.send("SUBSCRIBE", {"id": "1", "destination": "/queue/q"})
    b.send("SUBSCRIBE", {"id": "1", "destination": "/queue/q"})
    producer = lb.client()
    for i in range(6):
        producer.send("SEND", {"destination": "/queue/q"}, b"%d" % i)
    assert bodies(a) == [b"0", b"2", b"4"]
    assert bodies(b) == [b"1", b"3", b"5"]


def test_queue_keeps_backlog_until_a_consumer_arrives() -> None:
    lb = Loopback()
    producer = lb.client()
    for i in range(3):
        producer.send("SEND", {"destination": "/queue/later"}, b"%d" % i)
    assert lb.broker.queue_depth("/queue/later") == 3
    consumer = lb.client()
    consumer.send("SUBSCRIBE", {"id": "1", "destination": "/queue/later"})
    assert bodies(consumer) == [b"0", b"1", b"2"]


def test_full_queue_backlog_refuses_the_send() -> None:
    lb = Loopback(Broker(limits=Limits(max_queue_backlog=2)))
    producer = lb.client()
    producer.send("SEND", {"destination": "/queue/q"})
    producer.send("SEND", {"destination": "/queue/q"})
    producer.send("SEND", {"destination": "/queue/q"})
    [error] = producer.take()
    assert error.command is Command.ERROR
    assert error.get("message") == "queue full"
    assert producer.closed


def test_client_ack_is_cumulative_and_individual_is_not() -> None:
    lb = Loopback()
    cumulative, individual = lb.client(), lb.client()
    cumulative.send("SUBSCRIBE", {"id": "c", "destination": "/topic/t", "ack": "client"})
    individual.send("SUBSCRIBE", {"id": "i", "destination": "/topic/t", "ack": "client-individual"})
    producer = lb.client()
    for i in range(3):
        producer.send("SEND", {"destination": "/topic/t"}, b"%d" % i)
    c_msgs, i_msgs = cumulative.take(), individual.take()
    cumulative.send("ACK", {"id": c_msgs[1].get("ack")})
    assert list(lb.broker._sessions[cumulative.session].unacked) == [c_msgs[2].get("ack")]
    individual.send("ACK", {"id": i_msgs[1].get("ack")})
    assert list(lb.broker._sessions[individual.session].unacked) == [
        i_msgs[0].get("ack"),
        i_msgs[2].get("ack"),
    ]
    # acking an already settled message is an error: it is no longer known
    cumulative.send("ACK", {"id": c_msgs[0].get("ack")})
    assert cumulative.take()[0].get("message") == "unknown ack id"


def test_nack_and_disconnect_requeue_queue_messages() -> None:
    lb = Loopback()
    first, second = lb.client(), lb.client()
    first.send("SUBSCRIBE", {"id": "1", "destination": "/queue/work", "ack": "client-individual"})
    producer = lb.client()
    producer.send("SEND", {"destination": "/queue/work"}, b"a")
    producer.send("SEND", {"destination": "/queue/work"}, b"b")
    msgs = first.take()
    first.send("NACK", {"id": msgs[0].get("ack")})
    [again] = first.take()
    assert again.body == b"a"
    assert again.get("message-id") != msgs[0].get("message-id")
    second.send("SUBSCRIBE", {"id": "1", "destination": "/queue/work", "ack": "auto"})
    assert bodies(second) == []
    lb.drop(first)  # b and a were unacked: they go to the remaining consumer, in order
    assert bodies(second) == [b"a", b"b"]


def test_unacked_limit_holds_back_queue_delivery() -> None:
    lb = Loopback(Broker(limits=Limits(max_unacked=2)))
    consumer = lb.client()
    consumer.send("SUBSCRIBE", {"id": "1", "destination": "/queue/q", "ack": "client"})
    producer = lb.client()
    for i in range(5):
        producer.send("SEND", {"destination": "/queue/q"}, b"%d" % i)
    msgs = consumer.take()
    assert [m.body for m in msgs] == [b"0", b"1"]
    consumer.send("ACK", {"id": msgs[1].get("ack")})
    assert bodies(consumer) == [b"2", b"3"]


def test_slow_topic_consumer_with_client_acks_is_closed_others_continue() -> None:
    lb = Loopback(Broker(limits=Limits(max_unacked=2)))
    slow, fast = lb.client(), lb.client()
    slow.send("SUBSCRIBE", {"id": "1", "destination": "/topic/t", "ack": "client"})
    fast.send("SUBSCRIBE", {"id": "1", "destination": "/topic/t"})
    producer = lb.client()
    for i in range(4):
        producer.send("SEND", {"destination": "/topic/t"}, b"%d" % i)
    frames = slow.take()
    assert [f.command for f in frames] == [Command.MESSAGE, Command.MESSAGE, Command.ERROR]
    assert frames[-1].get("message") == "slow consumer"
    assert slow.closed
    assert bodies(fast) == [b"0", b"1", b"2", b"3"]


def test_transactions_commit_in_order_and_abort_discards() -> None:
    lb = Loopback()
    sub = lb.client()
    sub.send("SUBSCRIBE", {"id": "1", "destination": "/topic/t"})
    producer = lb.client()
    producer.send("BEGIN", {"transaction": "t1"})
    producer.send("SEND", {"destination": "/topic/t", "transaction": "t1"}, b"1")
    producer.send("SEND", {"destination": "/topic/t"}, b"outside")
    producer.send("SEND", {"destination": "/topic/t", "transaction": "t1"}, b"2")
    assert bodies(sub) == [b"outside"]
    producer.send("COMMIT", {"transaction": "t1"})
    assert bodies(sub) == [b"1", b"2"]
    producer.send("BEGIN", {"transaction": "t2"})
    producer.send("SEND", {"destination": "/topic/t", "transaction": "t2"}, b"never")
    producer.send("ABORT", {"transaction": "t2"})
    assert bodies(sub) == []
    producer.send("COMMIT", {"transaction": "t2"})
    [error] = producer.take()
    assert error.get("message") == "unknown transaction"


def test_transactional_ack() -> None:
    lb = Loopback()
    consumer = lb.client()
    consumer.send("SUBSCRIBE", {"id": "1", "destination": "/queue/q", "ack": "client-individual"})
    lb.client().send("SEND", {"destination": "/queue/q"}, b"x")
    [msg] = consumer.take()
    consumer.send("BEGIN", {"transaction": "t"})
    consumer.send("ACK", {"id": msg.get("ack"), "transaction": "t"})
    assert lb.broker._sessions[consumer.session].unacked
    consumer.send("COMMIT", {"transaction": "t"})
    assert not lb.broker._sessions[consumer.session].unacked


def test_user_destinations_reach_every_session_of_that_user_only() -> None:
    lb = Loopback()
    alice1, alice2, bob = lb.client("alice"), lb.client("alice"), lb.client("bob")
    for client in (alice1, alice2, bob):
        client.send("SUBSCRIBE", {"id": "u", "destination": "/user/queue/messages"})
    lb.apply(lb.broker.publish("user:alice:/queue/messages", b"for alice"))
    for client in (alice1, alice2):
        [message] = client.take()
        assert message.body == b"for alice"
        assert message.get("destination") == "/user/queue/messages"
    assert bob.take() == []
    bob.send("SEND", {"destination": "/user/alice/queue/messages"}, b"from bob")
    assert bodies(alice1) == [b"from bob"]


def test_principal_active_on_first_connect_and_last_disconnect_only() -> None:
    broker = Broker()
    connect = Connect(Frame(Command.CONNECT, ()), "1.2", "x", None, None, (0, 0))
    assert PrincipalActive("alice", True) in broker.connect("s1", connect, "alice")
    assert not [a for a in broker.connect("s2", connect, "alice") if isinstance(a, PrincipalActive)]
    assert not [a for a in broker.connect("s3", connect) if isinstance(a, PrincipalActive)]
    assert broker.principal_sessions("alice") == 2
    assert not [a for a in broker.disconnect("s1") if isinstance(a, PrincipalActive)]
    assert broker.disconnect("s1") == []  # twice: still counted once
    assert broker.disconnect("s2") == [PrincipalActive("alice", False)]
    assert broker.disconnect("s3") == []
    assert broker.principal_sessions("alice") == 0


def test_anonymous_session_cannot_use_user_destinations() -> None:
    lb = Loopback()
    anonymous = lb.client()
    anonymous.send("SUBSCRIBE", {"id": "u", "destination": "/user/queue/messages"})
    [error] = anonymous.take()
    assert error.command is Command.ERROR


def test_protocol_errors_answer_error_with_receipt_id_and_close() -> None:
    lb = Loopback()
    client = lb.client()
    client.send("SUBSCRIBE", {"id": "1", "destination": "/topic/t"})
    client.send("SUBSCRIBE", {"id": "1", "destination": "/topic/u", "receipt": "r9"})
    [error] = client.take()
    assert error.command is Command.ERROR
    assert error.get("message") == "duplicate subscription id"
    assert error.get("receipt-id") == "r9"
    assert client.closed
    assert lb.broker.session_count == 0
    assert lb.broker.subscriber_count("/topic/t") == 0


def test_subscription_limit() -> None:
    lb = Loopback(Broker(limits=Limits(max_subscriptions=2)))
    client = lb.client()
    for i in range(3):
        client.send("SUBSCRIBE", {"id": str(i), "destination": f"/topic/{i}"})
    [error] = client.take()
    assert error.get("message") == "too many subscriptions"


def test_destination_active_on_first_and_last_subscriber() -> None:
    lb = Loopback()
    a, b = lb.client(), lb.client()
    a.send("SUBSCRIBE", {"id": "1", "destination": "/topic/x"})
    assert lb.active == {"/topic/x": True}
    b.send("SUBSCRIBE", {"id": "1", "destination": "/topic/x"})
    a.send("UNSUBSCRIBE", {"id": "1"})
    assert lb.active == {"/topic/x": True}
    lb.drop(b)
    assert lb.active == {"/topic/x": False}


def test_disconnect_with_receipt() -> None:
    lb = Loopback()
    client = lb.client()
    client.send("SUBSCRIBE", {"id": "1", "destination": "/topic/t"})
    client.send("DISCONNECT", {"receipt": "bye"})
    [receipt] = client.take()
    assert receipt.get("receipt-id") == "bye"
    assert client.closed
    assert lb.broker.subscriber_count("/topic/t") == 0


def test_stomp_10_and_11_clients_ack_by_message_id() -> None:
    lb = Loopback()
    old = lb.client(version="1.1")
    old.send("SUBSCRIBE", {"id": "1", "destination": "/queue/q", "ack": "client"})
    lb.client().send("SEND", {"destination": "/queue/q"}, b"x")
    [msg] = old.take()
    assert msg.get("ack") is None
    old.send("ACK", {"message-id": msg.get("message-id"), "subscription": "1", "receipt": "ok"})
    [receipt] = old.take()
    assert receipt.command is Command.RECEIPT
