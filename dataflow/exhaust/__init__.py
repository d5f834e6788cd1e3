"""Program User Exhaust: the consent-aware User Detail Report (spec: exhaust.md).

job_requests (PostgreSQL job_request) -> filters -> sources (Cassandra rows, consents, Redis PII)
-> report (CSV) -> archive (zip) -> the request row says where the file is.
``python -m dataflow.exhaust --help`` runs it.
"""
