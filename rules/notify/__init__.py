"""Notifications: route alarm events to on-call hooks, grouped, rate-limited, retried, durable."""
