"""HTTP routes, one blueprint per concern: service (root, health, docs), legacy (the original
synchronous calls), jobs (the async job API)."""
