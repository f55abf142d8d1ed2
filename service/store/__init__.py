"""The durable source of truth behind ``service.ports.FaceStore``: one module per backend
(``sqlite``: the embedded default), the rows they exchange with the engine, and sealed
templates."""
