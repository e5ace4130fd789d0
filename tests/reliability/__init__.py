"""Reliability tests: the API contract fuzzed, faults injected at the AWS transport, security
scans and checks at the API's edges."""
