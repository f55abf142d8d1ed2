"""The face service without a transport: use cases (enrol, identify, verify, delete),
decisions, enrolment plans, probe tokens and micro-batching. It talks to storage and the
vector index only through the protocols in ``service.ports``."""
