"""Prometheus metrics of one server: requests, tokens, latency, time to first token, queue, batch size.

Each app gets its own CollectorRegistry, so two servers in one process (tests) don't share counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("llmkit_requests", "HTTP requests by route and status code", ["route", "status"], registry=r)
        self.latency = Histogram("llmkit_request_latency_seconds", "Time to the last byte of a response", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("llmkit_time_to_first_token_seconds",
                              "From the request's arrival to its first token: the client's wait (its body, the chat "
                              "template, the tokenizer, a grammar's compile and the engine's queue included)",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("llmkit_tokens", "Tokens processed, by model and type (prompt | completion)",
                              ["model", "type"], registry=r)
        self.queue = Gauge("llmkit_queue_depth", "Requests waiting for a place in the batch", ["model"], registry=r)
        self.running = Gauge("llmkit_running_sequences", "Sequences in the running batch", ["model"], registry=r)
        self.prefill = Counter("llmkit_prefill_tokens", "Prompt tokens run through the model (n choices of one prompt: once)",
                               ["model"], registry=r)
        self.batch = Histogram("llmkit_batch_size", "Sequences per decode step", ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.cancelled = Counter("llmkit_cancelled", "Generations stopped because the client went away", ["model"], registry=r)
        self.prefix_lookup = Gauge("llmkit_prefix_cache_lookup_tokens", "Prompt tokens looked up in the prefix cache",
                                   ["model"], registry=r)
        self.prefix_hits = Gauge("llmkit_prefix_cache_hit_tokens", "Prompt tokens restored from the prefix cache, "
                                 "not computed", ["model"], registry=r)
        self.prefix_rate = Gauge("llmkit_prefix_cache_hit_rate", "hit tokens / lookup tokens", ["model"], registry=r)
        self.prefix_bytes = Gauge("llmkit_prefix_cache_bytes", "Bytes of K/V held by the prefix cache", ["model"],
                                  registry=r)
        self.rejected = Counter("llmkit_rejected", "Requests turned away, by reason (queue_full | rate_limit | auth | shutting_down)",
                                ["reason"], registry=r)
        self.log_errors = Counter("llmkit_request_log_errors", "Requests answered whose --log-requests row the registry "
                                  "refused (its database down or unwritable)", registry=r)

    def render(self, engines: dict) -> bytes:
        for name, engine in engines.items():
            self.queue.labels(name).set(engine.depth())
            self.running.labels(name).set(engine.running)
            cache = engine.prefix_cache
            if cache is not None:
                self.prefix_lookup.labels(name).set(cache.queried)
                self.prefix_hits.labels(name).set(cache.hits)
                self.prefix_rate.labels(name).set(cache.hit_rate)
                self.prefix_bytes.labels(name).set(cache.bytes)
        return generate_latest(self.registry)
