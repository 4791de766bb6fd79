"""Wire models (v1), the money type and topic names. No I/O here."""
