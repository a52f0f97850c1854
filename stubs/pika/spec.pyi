class Basic:
    class Ack:
        delivery_tag: int
        multiple: bool
    class Nack:
        delivery_tag: int
        multiple: bool
