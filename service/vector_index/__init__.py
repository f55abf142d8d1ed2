"""The in-process vector index behind ``service.ports.VectorIndex``: FAISS galleries
(``index.Gallery``) kept in step with the store's change log, restored from sealed snapshots."""
