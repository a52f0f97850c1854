-- chatd schema 3: the W3C traceparent of the send that wrote an outbox row (docs/architecture.md,
-- Tracing), so its delivery continues the send's trace after the outbox breaks the call chain.
-- NULL when tracing was off.
ALTER TABLE chat_message_outbox ADD COLUMN trace_context TEXT;
