"""chatd: a real-time chat backend on trio with its own STOMP 1.2 broker."""
