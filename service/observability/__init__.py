"""Audit log, the audited engine wrapper, Prometheus metrics."""
