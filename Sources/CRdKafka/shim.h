#ifndef BATON_CRDKAFKA_SHIM_H
#define BATON_CRDKAFKA_SHIM_H

#include <librdkafka/rdkafka.h>
#include <malloc.h>

/// Gives freed heap pages back to the system (glibc's `malloc_trim`): for a process that just dropped a large
/// transient working set (a coordinator's rebuild). Returns 1 if memory was released.
static inline int baton_release_free_memory(void) { return malloc_trim(0); }

/// `rd_kafka_producev` is variadic, which Swift cannot call; this fixed-arity wrapper can be.
/// On success librdkafka takes ownership of `headers` (which may be NULL); on failure the caller keeps it.
/// Key and value are copied (RD_KAFKA_MSG_F_COPY), so the caller's buffers may go away at once.
static inline rd_kafka_resp_err_t baton_rd_kafka_produce(
    rd_kafka_t *rk, const char *topic, int32_t partition,
    const void *key, size_t key_len, const void *value, size_t value_len,
    rd_kafka_headers_t *headers, int64_t timestamp_ms, void *opaque)
{
    return rd_kafka_producev(
        rk,
        RD_KAFKA_V_TOPIC(topic),
        RD_KAFKA_V_PARTITION(partition),
        RD_KAFKA_V_KEY(key, key_len),
        RD_KAFKA_V_VALUE((void *)value, value_len),
        RD_KAFKA_V_HEADERS(headers),
        RD_KAFKA_V_TIMESTAMP(timestamp_ms),
        RD_KAFKA_V_OPAQUE(opaque),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_END);
}

#endif
